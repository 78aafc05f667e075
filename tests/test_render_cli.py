"""``nerfmine render`` (nerfmine.cli.render) on a tiny run trained for 3 steps on the CPU."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from nerfmine import camera_paths as cp
from nerfmine.cli import render as render_cli
from nerfmine.config import make_config
from nerfmine.trainer import Trainer

W, H, N = 24, 18, 3
HAS_FFMPEG = importlib.util.find_spec("imageio_ffmpeg") is not None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(2)
    run = tmp_path_factory.mktemp("render") / "run"
    config = make_config("cpu", {
        "model": {"log2_table_size": 12, "n_levels": 8, "max_resolution": 256},
        "occupancy": {"resolution": 32},
        "train": {"max_steps": 3, "target_samples": 2048, "initial_rays": 128},
        # a coarser march than instant-ngp's keeps the CPU renders quick
        "march": {"max_steps_per_ray": 128, "step_size": math.sqrt(3) / 128},
        "eval": {"max_images": 1},
    })
    Trainer(config, run).train()
    return run


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nerfmine")
    sub = parser.add_subparsers(dest="command", required=True)
    render_cli.add_parser(sub)
    return parser.parse_args(["render", *argv])


def _render(run_dir, out, *extra: str) -> int:
    args = _parse(str(run_dir), "--width", str(W), "--height", str(H), "--frames", str(N),
                  "--output", str(out), "--no-video", *extra)
    return render_cli.run(args)


def _frames(folder):
    files = sorted(folder.glob("frame_*.png"))
    return [np.asarray(Image.open(f)) for f in files]


def test_parser_defaults(run_dir):
    args = _parse(str(run_dir))
    assert args.path == "orbit" and args.frames == 120 and args.outputs == "rgb"
    assert args.video is None and args.width is None and args.output is None
    assert args.func is render_cli.run


def test_orbit_rgb_frames(run_dir, tmp_path, capsys):
    out = tmp_path / "orbit"
    assert _render(run_dir, out) == 0
    frames = _frames(out / "rgb")
    assert len(frames) == N
    for f in frames:
        assert f.shape == (H, W, 3) and f.dtype == np.uint8
    assert not (out / "depth").exists() and not (out / "alpha").exists()
    assert str(out) in capsys.readouterr().out
    info = json.loads((out / "render.json").read_text())
    assert info["frames"] == N and info["videos"] == []
    path = cp.read_camera_path(out / "camera_path.json")
    assert len(path) == N and (path.width, path.height) == (W, H)


def test_render_is_deterministic(run_dir, tmp_path):
    assert _render(run_dir, tmp_path / "a", "--path", "spiral") == 0
    assert _render(run_dir, tmp_path / "b", "--path", "spiral") == 0
    a, b = _frames(tmp_path / "a" / "rgb"), _frames(tmp_path / "b" / "rgb")
    assert len(a) == N and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_depth_and_alpha_outputs(run_dir, tmp_path):
    out = tmp_path / "da"
    assert _render(run_dir, out, "--outputs", "depth,alpha", "--background", "black",
                   "--path", "interpolate") == 0
    assert not (out / "rgb").exists()
    depth, alpha = _frames(out / "depth"), _frames(out / "alpha")
    assert len(depth) == N and len(alpha) == N
    for d, a in zip(depth, alpha):
        assert d.shape == (H, W, 3) and d.dtype == np.uint8
        assert a.shape == (H, W) and a.dtype == np.uint8  # 8-bit gray: opacity in [0, 1]
        assert a.min() >= 0 and a.max() <= 255
    info = json.loads((out / "render.json").read_text())
    near, far = info["depth_range_world"]
    assert 0 <= near < far
    # The raw depth beside each PNG: float32 world units, NaN exactly where nothing is hit,
    # and where something is, within the path's depth range (the colour map's ends).
    raw = [np.load(f) for f in sorted((out / "depth").glob("frame_*.npy"))]
    assert len(raw) == N
    for r, a in zip(raw, alpha):
        assert r.shape == (H, W) and r.dtype == np.float32
        hit = np.isfinite(r)
        assert hit[a > 0].all() and (a[~hit] == 0).all()  # a > 0: opacity above 1/510
        assert hit.any() and (r[hit] >= near * (1 - 1e-4)).all()
        assert (r[hit] <= far * (1 + 1e-4)).all()


def test_alpha_matches_rgb_over_backgrounds(run_dir, tmp_path):
    """rgb over white minus rgb over black = 1 - alpha (the compositing identity)."""
    assert _render(run_dir, tmp_path / "w", "--outputs", "rgb,alpha") == 0
    assert _render(run_dir, tmp_path / "k", "--background", "black") == 0
    white = np.stack(_frames(tmp_path / "w" / "rgb")).astype(float) / 255
    black = np.stack(_frames(tmp_path / "k" / "rgb")).astype(float) / 255
    alpha = np.stack(_frames(tmp_path / "w" / "alpha")).astype(float) / 255
    assert np.abs((white - black) - (1 - alpha)[..., None]).max() <= 2.5 / 255


def test_camera_path_file(run_dir, tmp_path):
    path = cp.CameraPath(c2w=cp.orbit_path((0, 0, 0), 4.0, 2.0, 2), fov_y=torch.tensor([40.0, 45]),
                         width=16, height=12, fps=10)
    file = cp.write_camera_path(tmp_path / "mine.json", path)
    args = _parse(str(run_dir), "--path", str(file), "--no-video", "--outputs", "rgb,alpha")
    assert render_cli.run(args) == 0
    out = run_dir / "render_mine"
    frames = _frames(out / "rgb")
    assert len(frames) == 2 and frames[0].shape == (12, 16, 3)
    assert json.loads((out / "render.json").read_text())["fps"] == 10


def test_default_size_is_the_training_images(run_dir, tmp_path):
    args = _parse(str(run_dir), "--frames", "1", "--output", str(tmp_path / "d"), "--no-video",
                  "--height", "10")
    assert render_cli.run(args) == 0
    (frame,) = _frames(tmp_path / "d" / "rgb")
    assert frame.shape == (10, 10, 3)  # the demo scene is square: the aspect ratio is kept


@pytest.mark.parametrize("flags, message", [
    (("--width", "0"), "--width must be a positive number of pixels, got 0"),
    (("--height", "-5"), "--height must be a positive number of pixels, got -5"),
    (("--width", "100000", "--height", "100000"), "GiB"),
    (("--background", "blue"), "--background"),
    (("--background", "2,0,0"), "--background"),
    (("--outputs", "rgb,normals"), "unknown: normals"),
    (("--path", "nope"), "--path"),
    (("--frames", "0"), "--frames"),
    (("--fov", "200"), "--fov"),
])
def test_bad_input_returns_2(run_dir, tmp_path, capsys, flags, message):
    args = _parse(str(run_dir), "--no-video", "--output", str(tmp_path / "x"), *flags)
    assert render_cli.run(args) == 2
    err = capsys.readouterr().err
    assert message in err
    if message == "GiB":
        assert "a 100000x100000 frame would need about 1192" in err


def test_missing_run_folder(tmp_path, capsys):
    assert render_cli.run(_parse(str(tmp_path / "no_run"), "--no-video")) == 2
    assert "no_run" in capsys.readouterr().err


def test_run_folder_without_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert render_cli.run(_parse(str(tmp_path / "empty"), "--no-video")) == 2
    assert "empty" in capsys.readouterr().err


@pytest.mark.skipif(HAS_FFMPEG, reason="imageio-ffmpeg is installed")
def test_explicit_video_without_ffmpeg_errors(run_dir, tmp_path, capsys):
    args = _parse(str(run_dir), "--video", "--output", str(tmp_path / "v"))
    assert render_cli.run(args) == 2
    assert "pip install 'nerfmine[video]'" in capsys.readouterr().err


def test_mp4_written(run_dir, tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="MP4 needs imageio-ffmpeg "
                                                 "(pip install 'nerfmine[video]')")
    import imageio.v3 as iio

    out = tmp_path / "vid"
    args = _parse(str(run_dir), "--width", "23", "--height", "17", "--frames", str(N),
                  "--output", str(out), "--video", "--outputs", "rgb,alpha")
    assert render_cli.run(args) == 0
    for name in ("rgb", "alpha"):
        video = iio.imread(out / f"{name}.mp4")
        assert video.shape[0] == N and video.shape[1:3] == (18, 24)  # padded to even
