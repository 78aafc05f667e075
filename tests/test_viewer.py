"""The web viewer (nerfmine.viewer) without a browser: camera conversion, rendering, the server's
lifecycle and the command line's messages. tests/test_viewer_browser.py drives a real browser."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import _viewer_scene as scene
import numpy as np
import pytest
import torch

from nerfmine import camera_paths as cp
from nerfmine import cli, viewer
from nerfmine.errors import NerfmineError

HAS_VISER = importlib.util.find_spec("viser") is not None
needs_viser = pytest.mark.skipif(not HAS_VISER, reason="viser is not installed "
                                 "(pip install 'nerfmine[view]')")

def viser_look_at(eye, target, up) -> np.ndarray:
    """The wxyz that viser's client reports for a camera at ``eye`` looking at ``target``
    (OpenCV axes: +z forward, +y down; viser.CameraHandle._update_wxyz)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = (target - eye) / np.linalg.norm(target - eye)
    y = -(up - np.dot(up, z) * z)
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    return viewer.matrix_to_quat(np.stack([x, y, z], axis=1))


# --------------------------------------------------------------------------- cameras
def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        rot = viewer.quat_to_matrix(q)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(rot) == pytest.approx(1.0)
        back = viewer.matrix_to_quat(rot)
        assert min(np.abs(back - q).max(), np.abs(back + q).max()) < 1e-10


def test_quaternion_matches_viser():
    tf = pytest.importorskip("viser.transforms", reason="viser is not installed")
    rng = np.random.default_rng(1)
    for _ in range(10):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        np.testing.assert_allclose(viewer.quat_to_matrix(q), tf.SO3(q).as_matrix(), atol=1e-10)


def test_viser_camera_is_the_look_at_pose():
    eye, target, up = np.array([3.0, -2.0, 1.5]), np.array([0.2, 0.1, -0.3]), np.array([0, 0, 1.0])
    c2w = viewer.viser_to_c2w(viser_look_at(eye, target, up), eye)
    np.testing.assert_allclose(c2w, cp.look_at(eye, target, up).double().numpy(), atol=1e-6)
    forward = -c2w[:3, 2]  # OpenGL cameras look down -z
    np.testing.assert_allclose(forward, (target - eye) / np.linalg.norm(target - eye), atol=1e-9)
    assert c2w[:3, 1] @ up > 0  # +y is the image's up
    wxyz, position = viewer.c2w_to_viser(c2w)
    np.testing.assert_allclose(viewer.viser_to_c2w(wxyz, position), c2w, atol=1e-9)


def test_view_camera_size():
    cam = viewer.ViewCamera(np.eye(4), 1.0, 16 / 9)
    assert cam.size(160) == (160, 90)
    assert viewer.ViewCamera(np.eye(4), 1.0, 0.5).size(100) == (50, 100)


# --------------------------------------------------------------------------- rendering
@pytest.fixture(scope="module")
def block_trainer():
    """The block scene (named as the training run's scene it stands for)."""
    return scene.block_scene()


_set_block = scene.set_block
_world = scene.world


def _rendered_block(trainer, block_unit, size=(48, 32)):
    """Where the block shows in the image of a viser camera looking at the scene centre from
    world +x, with world +z up (image right = world +y)."""
    _set_block(trainer, block_unit)
    renderer = viewer.FieldRenderer(trainer)
    center = _world(trainer, (0.5, 0.5, 0.5))
    eye = center + np.array([1.6, 0.0, 0.0]) / trainer.config.data.scale
    wxyz = viser_look_at(eye, center, (0.0, 0.0, 1.0))
    cam = viewer.ViewCamera(viewer.viser_to_c2w(wxyz, eye), math.radians(40.0),
                            size[0] / size[1])
    image = renderer.render(cam, *size)
    assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8
    covered = np.abs(image.astype(int) - 255).sum(-1) > 60  # not the white background
    assert covered.any()
    rows, cols = np.nonzero(covered)
    return rows.mean() / size[1], cols.mean() / size[0], image


def test_centre_block_shows_in_the_middle(block_trainer):
    row, col, image = _rendered_block(block_trainer, (0.5, 0.5, 0.5))
    assert abs(row - 0.5) < 0.05 and abs(col - 0.5) < 0.05
    assert image.min() >= 100 and image.max() == 255  # grey block over white


def test_block_above_shows_at_the_top(block_trainer):
    row, col, _ = _rendered_block(block_trainer, (0.5, 0.5, 0.75))
    assert row < 0.4 and abs(col - 0.5) < 0.05


def test_block_to_the_right_shows_on_the_right(block_trainer):
    row, col, _ = _rendered_block(block_trainer, (0.5, 0.75, 0.5))
    assert col > 0.6 and abs(row - 0.5) < 0.05


def test_render_abort_and_range(block_trainer):
    _set_block(block_trainer, (0.5, 0.5, 0.5))
    renderer = viewer.FieldRenderer(block_trainer, background=(0.0, 0.0, 0.0),
                                    rays_per_chunk=256)
    center = _world(block_trainer, (0.5, 0.5, 0.5))
    eye = center + np.array([0.0, -4.0, 1.0])
    cam = viewer.ViewCamera(cp.look_at(eye, center, (0, 0, 1)).double().numpy(), 0.8, 1.0)
    assert renderer.render(cam, 40, 40, should_abort=lambda: True) is None
    image = renderer.render(cam, 40, 40)
    assert image.shape == (40, 40, 3) and image.min() == 0 and image.max() > 100


def test_snapshots_copy_the_ema_weights(block_trainer):
    trainer = block_trainer
    renderer = viewer.FieldRenderer(trainer)
    before = renderer.version
    saved = [e.clone() for e in trainer.ema]
    try:
        with torch.no_grad():
            for e in trainer.ema:
                e.add_(0.25)
        assert not renderer.take_pending()  # nothing published yet
        renderer.publish(trainer)
        with torch.no_grad():
            for e in trainer.ema:
                e.add_(1.0)  # training goes on: the published snapshot must not follow
        assert renderer.take_pending() and renderer.version == before + 1
        for p, e in zip(renderer.field.parameters(), trainer.ema):
            torch.testing.assert_close(p, e - 1.0)
        for p, q in zip(renderer.field.parameters(), trainer.field.parameters()):
            assert p.data_ptr() != q.data_ptr()  # renders never read the training weights
    finally:
        with torch.no_grad():
            for e, s in zip(trainer.ema, saved):
                e.copy_(s)


def test_moving_camera_frames_march_coarser(block_trainer):
    """A moving camera's frame (coarse=True) evaluates the network at fewer samples than the
    still frame of the same view (on a CPU its steps are 4x longer), and both are full frames.
    How fast that is on a CPU is not asserted here (no timed tests)."""
    trainer = block_trainer
    _set_block(trainer, (0.5, 0.5, 0.5), half=0.25)
    renderer = viewer.FieldRenderer(trainer)
    center = _world(trainer, (0.5, 0.5, 0.5))
    cam = viewer.ViewCamera(cp.look_at(center + np.array([4.0, 0, 1]), center,
                                       (0, 0, 1)).double().numpy(), 0.7, 1.0)
    evaluated = []
    forward = renderer.field.forward

    def counting(positions, directions):
        evaluated.append(positions.shape[0])
        return forward(positions, directions)

    renderer.field.forward = counting
    fine = renderer.render(cam, 64, 64)
    n_fine, evaluated[:] = sum(evaluated), []
    coarse = renderer.render(cam, 64, 64, coarse=True)
    n_coarse = sum(evaluated)
    assert fine.shape == coarse.shape == (64, 64, 3)
    assert 0 < n_coarse < n_fine


def test_share_lock_excludes_renders_from_training_steps(block_trainer, tmp_path):
    """On CUDA, training steps and render work take turns (a step may be captured as a CUDA
    graph): the renderer's lock is the trainer's step guard. Checked here on the CPU."""
    from nerfmine.config import make_config
    from nerfmine.trainer import Trainer

    renderer = viewer.FieldRenderer(block_trainer)
    lock = renderer.share_lock()
    trainer = Trainer(make_config("cpu", scene.TINY), tmp_path)
    trainer.hooks.step_guard = lock
    held = []
    step = trainer.step_fn
    trainer.step_fn = lambda index, lr: held.append(lock.locked()) or step(index, lr)
    trainer.train_step()
    assert held == [True] and not lock.locked() and trainer.step == 1
    seen = []

    def abort():
        seen.append(lock.locked())
        return False

    cam = viewer.ViewCamera(np.eye(4), 0.8, 1.0)
    assert renderer.render(cam, 8, 8, should_abort=abort) is not None
    assert seen == [False]  # released between chunks, so steps go on while a frame renders


# --------------------------------------------------------------------------- ports, messages
@contextlib.contextmanager
def _busy_port():
    """A local port something listens on, for the duration of the block."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


def test_port_in_use_is_named():
    with _busy_port() as port:
        with pytest.raises(NerfmineError, match=f"port {port} is already in use.*--port"):
            viewer.check_port("127.0.0.1", port)
    viewer.check_port("127.0.0.1", port)  # free again


def test_missing_viser_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "viser", None)
    with pytest.raises(NerfmineError, match=r"pip install 'nerfmine\[view\]'"):
        viewer.import_viser()


def test_view_missing_viser_cli(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "viser", None)
    assert cli.main(["view", str(tmp_path)]) == 2
    assert "nerfmine[view]" in capsys.readouterr().err


@needs_viser
def test_view_missing_run_folder(tmp_path, capsys):
    assert cli.main(["view", str(tmp_path / "nope"), "--port", str(viewer.free_port())]) == 2
    err = capsys.readouterr().err
    assert "no such run folder" in err and "Traceback" not in err


@needs_viser
def test_view_folder_without_checkpoint(tmp_path, capsys):
    assert cli.main(["view", str(tmp_path), "--port", str(viewer.free_port())]) == 2
    assert "no checkpoint here" in capsys.readouterr().err


@needs_viser
def test_view_port_in_use_cli(tmp_path, capsys):
    with _busy_port() as port:
        assert cli.main(["view", str(tmp_path), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} is already in use" in err and "--port" in err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- the server
@needs_viser
def test_server_starts_serves_and_stops(block_trainer):
    _set_block(block_trainer, (0.5, 0.5, 0.5))
    port = viewer.free_port()
    v = viewer.Viewer(viewer.FieldRenderer(block_trainer), None, port=port, max_res=64)
    v.start()
    try:
        assert v.url == f"http://localhost:{port}"
        assert f"ssh -N -L {port}:localhost:{port}" in v.banner()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
        with pytest.raises(NerfmineError, match=f"port {port} is already in use"):
            viewer.Viewer(viewer.FieldRenderer(block_trainer), None, port=port).start()
        thread = v._thread
        assert thread.is_alive()
    finally:
        v.stop()
    assert not thread.is_alive() and v.server is None
    viewer.check_port("127.0.0.1", port)  # released


@needs_viser
def test_progress_updates_panel_and_publishes_only_with_a_browser(block_trainer):
    v = viewer.Viewer(viewer.FieldRenderer(block_trainer), None, port=viewer.free_port(),
                      scene=block_trainer, refresh_seconds=0.0)
    v.start()
    try:
        info = {"step": 7, "clock": 12.5, "loss": 0.0123, "time_left": 30.0, "psnr": None}
        v.on_progress(info)
        assert "**step** 7" in v._status.content and "0.01230" in v._status.content
        assert v.renderer._pending is None  # no browser: no snapshot taken
        v._states[0] = viewer.server._ClientState()  # as if a browser were connected
        v.on_progress(info | {"step": 8})
        assert v.renderer._pending is not None and v.renderer._pending[2] == block_trainer.step
        v.on_progress({"event": "eval", "step": 8, "clock": 13.0, "psnr": 21.5, "ssim": 0.8})
        assert "21.50 dB" in v._status.content
        assert v.errors == []
    finally:
        v.stop()


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps({k: v for k, v in scene.TINY.items() if k != "train"}
                               | {"train": {k: v for k, v in scene.TINY["train"].items()
                                            if k != "max_steps"}}))
    return path


@needs_viser
def test_train_with_view_serves_until_interrupted(tmp_path, tiny_config):
    """``nerfmine train --view`` prints the URL, serves while and after training, and stops
    cleanly on Ctrl-C (exit 0, no traceback)."""
    port = viewer.free_port()
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(viewer.__file__).parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-m", "nerfmine.cli", "train", "--steps", "3",
         "--config", str(tiny_config), "--preset", "cpu", "--output", str(run), "--quiet",
         "--view", "--view-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "still serving" in line:
                break
        text = "".join(lines)
        assert f"open http://localhost:{port}" in text, text
        assert "still serving" in text, text
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.status == 200
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            out, err = proc.communicate(timeout=30)
            pytest.fail(f"no exit within 120 s of Ctrl-C; the threads' stacks:\n{err[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "viewer stopped" in out and "Traceback" not in err
    assert (run / "checkpoint.pt").exists()


@needs_viser
def test_train_view_port_in_use(tmp_path, capsys):
    with _busy_port() as port:
        code = cli.main(["train", "--steps", "1", "--output", str(tmp_path / "run"), "--view",
                         "--view-port", str(port)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"port {port} is already in use" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_the_command_line_shares_the_viewers_defaults():
    """cli/view.py repeats a few of the viewer's constants so that ``nerfmine --help`` imports
    neither torch nor viser; they must stay equal."""
    from nerfmine.cli import view as view_cli

    for name in ("DEFAULT_PORT", "DEFAULT_HOST", "MIN_SIDE", "INSTALL_HINT"):
        assert getattr(view_cli, name) == getattr(viewer, name), name


def test_frame_rate_over_the_last_seconds():
    from nerfmine.viewer.server import FrameRate, render_info

    meter = FrameRate(window=2.0)
    assert meter.rate(0.0) is None
    for i in range(11):  # 10 frames a second for a second
        meter.add(i * 0.1)
    assert meter.rate(1.0) == pytest.approx(10.0)
    meter.add(3.5)  # a pause: the earlier frames leave the window
    assert meter.rate(3.5) is None
    meter.add(3.75)
    assert meter.rate(3.75) == pytest.approx(4.0)
    assert meter.rate(10.0) is None  # nothing sent lately
    line = render_info(1280, 720, 0.0254, 39.37, 1200)
    assert line == "render: 1280x720 in 25 ms, 39.4 frames/s (weights of step 1200)"
    assert "frames/s" not in render_info(64, 36, 0.5, None, 0)
