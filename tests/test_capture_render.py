"""``nerfmine eval`` and ``nerfmine render`` on runs trained from a transforms.json capture
(every-8th hold-out, per-image intrinsics, lens distortion): a tiny capture the test writes, and
instant-ngp's fox when ../shared/data is present. Eval writes renders next to their photographs
with ``--side-by-side``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import shared_data_dir
from PIL import Image

from nerfmine import cli
from nerfmine.cli.eval import SIDE_BY_SIDE_GAP
from nerfmine.config import make_config
from nerfmine.trainer import Trainer

SHARED = shared_data_dir()
TINY = {"model": {"log2_table_size": 11, "n_levels": 4, "max_resolution": 64},
        "occupancy": {"resolution": 16},
        "train": {"target_samples": 1024, "initial_rays": 64},
        "march": {"max_steps_per_ray": 64, "step_size": math.sqrt(3) / 64},
        "eval": {"max_images": 2, "save_renders": False}}
W, H, FRAMES = 16, 12, 10


def _look_at(eye: np.ndarray) -> list[list[float]]:
    """OpenGL camera-to-world pose at ``eye`` looking at the origin, +z up."""
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m.tolist()


def write_capture(folder) -> None:
    """An instant-ngp transforms.json with per-frame intrinsics and OpenCV distortion, RGB
    JPEGs in images/ (names sorted so that 00 and 08 are held out)."""
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    frames = []
    for i in range(FRAMES):
        angle = 2 * math.pi * i / FRAMES
        eye = np.array([1.2 * math.cos(angle), 1.2 * math.sin(angle), 0.4])
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i:02d}.png")
        frames.append({"file_path": f"images/{i:02d}.png", "transform_matrix": _look_at(eye),
                       "fl_x": 14.0 + 0.1 * i, "fl_y": 14.0, "cx": W / 2, "cy": H / 2,
                       "k1": 0.01 + 0.002 * i})
    meta = {"w": W, "h": H, "k1": 0.01, "aabb_scale": 1, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def capture_run(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("capture")
    write_capture(root / "scene")
    overrides = json.loads(json.dumps(TINY))
    overrides["data"] = {"path": str(root / "scene")}
    overrides["train"]["max_steps"] = 2
    trainer = Trainer(make_config("cpu", overrides), root / "run")
    assert trainer.train_data.camera_model == "opencv" and len(trainer.train_data) == 8
    trainer.train()
    return root / "run"


def _check_pairs(run_dir, capsys, photos: dict[str, np.ndarray]):
    folder = run_dir / "renders" / "test"
    assert cli.main(["eval", str(run_dir), "--side-by-side"]) == 0
    out = capsys.readouterr().out
    assert "_vs_photo.png" in out
    for name, photo in photos.items():
        render = np.asarray(Image.open(folder / f"{name}.png"))
        pair = np.asarray(Image.open(folder / f"{name}_vs_photo.png"))
        h, w = render.shape[:2]
        assert pair.shape == (h, 2 * w + SIDE_BY_SIDE_GAP, 3)
        assert np.array_equal(pair[:, :w], render)
        assert np.array_equal(pair[:, w + SIDE_BY_SIDE_GAP:], photo)


def test_eval_writes_renders_next_to_photographs(capture_run, capsys):
    scene = capture_run.parent / "scene" / "images"
    photos = {n: np.asarray(Image.open(scene / f"{n}.png")) for n in ("00", "08")}  # held out
    _check_pairs(capture_run, capsys, photos)
    result = json.loads((capture_run / "eval_test.json").read_text())
    assert [r["name"] for r in result["per_image"]] == ["00", "08"]


@pytest.mark.parametrize("path", ["orbit", "interpolate"])
def test_render_a_capture_run(capture_run, tmp_path, path):
    out = tmp_path / path
    assert cli.main(["render", str(capture_run), "--path", path, "--frames", "2",
                     "--no-video", "--output", str(out)]) == 0
    frames = sorted((out / "rgb").glob("frame_*.png"))
    assert len(frames) == 2
    assert np.asarray(Image.open(frames[0])).shape == (H, W, 3)  # the training images' size


def test_side_by_side_without_renders_is_refused(capture_run, capsys):
    assert cli.main(["eval", str(capture_run), "--side-by-side", "--no-renders"]) == 2
    err = capsys.readouterr().err
    assert "--side-by-side" in err and "--no-renders" in err and "Traceback" not in err


@pytest.mark.skipif(SHARED is None or not (SHARED / "fox" / "transforms.json").is_file(),
                    reason="../shared/data/fox is not present (set NERFMINE_SHARED_DATA to its "
                           "data folder)")
def test_fox_eval_pairs_and_render(tmp_path, capsys):
    overrides = json.loads(json.dumps(TINY))
    overrides["data"] = {"path": str(SHARED / "fox"), "downscale": 16}
    overrides["train"]["max_steps"] = 1
    run = tmp_path / "fox"
    trainer = Trainer(make_config("cpu", overrides), run)
    trainer.train()
    data = trainer.eval_data  # the every-8th hold-out, 540x960 / 16
    photos = {data.image_paths[i].stem: np.asarray(Image.fromarray(
        data.images[i].numpy()).convert("RGB")) for i in range(2)}
    _check_pairs(run, capsys, photos)
    assert cli.main(["render", str(run), "--frames", "1", "--no-video",
                     "--output", str(tmp_path / "orbit")]) == 0
    frame = np.asarray(Image.open(tmp_path / "orbit" / "rgb" / "frame_00000.png"))
    assert frame.shape == (960 // 16, 540 // 16, 3)


def test_moved_scene_asks_for_data(capture_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(capture_run, run)
    config = json.loads((run / "config.json").read_text())
    config["data"]["path"] = str(tmp_path / "gone")
    from nerfmine.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

    state = load_checkpoint(run / CHECKPOINT_NAME)
    state["config"]["data"]["path"] = str(tmp_path / "gone")
    save_checkpoint(run / CHECKPOINT_NAME, state)
    for argv in (["eval", str(run)], ["render", str(run), "--frames", "1", "--no-video"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "--data" in err and "gone" in err and "Traceback" not in err
    scene = capture_run.parent / "scene"
    assert cli.main(["eval", str(run), "--data", str(scene), "--no-renders"]) == 0
