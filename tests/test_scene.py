"""The trained scene (nerfmine.scene): what eval, render, export and the viewer load from a run.

Run folders written before the trainer, config and command line were reshaped (commit 286bf1b,
tests/data/runs_286bf1b, made by tests/data/make_old_runs.py) must still load, evaluate to the
PSNR they recorded, render the same pixels and resume; a scene loaded from a new run renders
what the trainer evaluated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerfmine.cameras import Cameras
from nerfmine.cli import main
from nerfmine.config import make_config
from nerfmine.evaluator import Evaluator
from nerfmine.ops.distortion import camera_rays
from nerfmine.scene import TrainedScene
from nerfmine.trainer import Trainer

OLD = Path(__file__).parent / "data" / "runs_286bf1b"
# A CPU test wherever it runs (a GPU machine would otherwise train on CUDA).
TINY = {"device": "cpu", "backend": "torch",
        "model": {"log2_table_size": 10, "n_levels": 4, "max_resolution": 64, "hidden_dim": 16},
        "occupancy": {"resolution": 16, "update_interval": 2, "warmup_steps": 2},
        "train": {"max_steps": 4, "target_samples": 1024, "initial_rays": 64,
                  "ray_granularity": 32, "checkpoint_every": 1e9},
        "march": {"max_steps_per_ray": 128, "step_size": 3**0.5 / 128},
        "eval": {"max_images": 2}}


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int64)


def _close_images(new: Path, old: Path) -> None:
    """The same 8-bit image: renders are deterministic, and a last-bit difference of the CPU's
    vectorised exp between machines may at most flip one level somewhere."""
    a, b = _png(new), _png(old)
    assert a.shape == b.shape, (new, a.shape, b.shape)
    diff = np.abs(a - b)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (new, int(diff.max()))


@pytest.fixture()
def old_runs(tmp_path):
    """A writable copy of the old run folders (eval and render write into them)."""
    shutil.copytree(OLD, tmp_path / "runs")
    return tmp_path / "runs"


@pytest.mark.parametrize("name", ["demo_run", "capture_run"])
def test_an_old_run_loads_and_evaluates_to_its_recorded_psnr(name, old_runs):
    recorded = json.loads((OLD / name / "metrics.json").read_text())
    data = old_runs / "capture_scene" if name == "capture_run" else None
    overrides = {"data": {"path": str(data)}} if data else None
    scene = TrainedScene.load(old_runs / name, overrides)
    assert scene.config.config_version == 2 and scene.step == recorded["steps"]
    # Layout 1 kept these in train; they are read where today's code looks for them.
    old_config = json.loads((OLD / name / "config.json").read_text())
    assert scene.config.march.step_size == old_config["train"]["step_size"]
    assert scene.config.eval.max_images == old_config["train"]["eval_max_images"] == 2
    assert scene.config.optim.ema_decay == old_config["train"]["ema_decay"]
    evaluator = Evaluator(scene)
    result = evaluator.evaluate(save_dir=old_runs / "again")
    assert result.psnr == pytest.approx(recorded["psnr"], abs=1e-4)
    for image, old in zip(result.per_image, recorded["per_image"], strict=True):
        assert image["name"] == old["name"]
        assert image["psnr"] == pytest.approx(old["psnr"], abs=1e-4)
        _close_images(old_runs / "again" / f"{image['name']}.png",
                      OLD / name / "renders" / "test" / f"{image['name']}.png")


@pytest.mark.parametrize("name", ["demo_run", "capture_run"])
def test_an_old_run_renders_the_frames_it_rendered(name, old_runs, capsys):
    extra = ["--data", str(old_runs / "capture_scene")] if name == "capture_run" else []
    out = old_runs / "frames"
    assert main(["render", str(old_runs / name), "--frames", "2", "--width", "24", "--height",
                 "18", "--outputs", "rgb,depth,alpha", "--no-video", "--output", str(out),
                 *extra]) == 0
    for kind in ("rgb", "depth", "alpha"):
        for i in range(2):
            _close_images(out / kind / f"frame_{i:05d}.png",
                          OLD / name / "render_orbit" / kind / f"frame_{i:05d}.png")
    old_info = json.loads((OLD / name / "render_orbit" / "render.json").read_text())
    new_info = json.loads((out / "render.json").read_text())
    for key in ("step", "frames", "width", "height", "fps"):
        assert new_info[key] == old_info[key], key
    np.testing.assert_allclose(new_info["depth_range_world"], old_info["depth_range_world"],
                               rtol=1e-6)
    assert main(["eval", str(old_runs / name), "--no-renders", *extra]) == 0
    assert "PSNR" in capsys.readouterr().out


def test_an_old_run_exports_and_resumes(old_runs):
    run = old_runs / "demo_run"
    assert main(["export", str(run), "--points", "--n-points", "200", "--threshold", "0",
                 "-o", str(old_runs / "points.ply")]) == 0
    assert (old_runs / "points.ply").is_file()
    trainer = Trainer.resume(run, {"train": {"max_steps": 8}})
    assert trainer.step == 6 and trainer.config.eval.max_images == 2
    metrics = trainer.train()
    assert metrics["steps"] == 8
    saved = json.loads((run / "config.json").read_text())
    assert saved["config_version"] == 2 and "step_size" in saved["march"]
    assert "step_size" not in saved["train"]


def test_a_loaded_scene_renders_what_the_trainer_evaluated(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(make_config("cpu", TINY), run)
    trainer.train()
    with trainer.scene.ema_weights():
        ema = [p.detach().clone() for p in trainer.field.parameters()]
    scene = TrainedScene.load(run)
    assert scene.ema is None and scene.step == trainer.step == 4
    for p, e in zip(scene.field.parameters(), ema, strict=True):
        assert torch.equal(p, e)  # the loaded field holds the EMA weights
    assert torch.equal(scene.occupancy.bitfield, trainer.occupancy.bitfield)
    data = trainer.eval_data
    cameras = scene.to_unit(data.cameras())
    for i, image in enumerate(trainer.history[-1].per_image):
        rgb = scene.render(cameras, i)["rgb"].clamp(0, 1)
        saved = torch.from_numpy(_png(run / "renders" / "test" / f"{image['name']}.png"))
        assert torch.equal((rgb * 255.0 + 0.5).to(torch.uint8).long(), saved)
    # The scene on its own: a smaller file that loads to the same renders.
    path = scene.save(tmp_path / "scene.pt")
    again = TrainedScene.load(path)
    assert path.stat().st_size < (run / "checkpoint.pt").stat().st_size
    assert torch.equal(again.render(cameras, 0)["rgb"], scene.render(cameras, 0)["rgb"])


def test_cameras_of_a_capture_make_the_rays_of_the_lens_model(tmp_path):
    """Per-camera intrinsics and distortion: the pinhole path (shared intrinsics, scalars) and
    the per-camera path give the same rays where both apply; a lens bends them."""
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, :3, 3] = torch.tensor([[0.0, 0.0, 2.0], [0.5, 0.0, 2.0], [0.0, 0.5, 2.0]])
    shared = Cameras.pinhole(c2w, 20.0, 21.0, 16, 12, cx=8.25, cy=5.5)
    per = Cameras(c2w, shared.intrinsics.clone(), 16, 12, "opencv", torch.zeros(3, 6))
    px, py = torch.rand(50) * 16, torch.rand(50) * 12
    cam = torch.randint(0, 3, (50,))
    o1, d1 = shared.rays(px, py, cam)
    o2, d2 = per.rays(px, py, cam)
    assert torch.equal(o1, o2)
    torch.testing.assert_close(d1, d2, rtol=0, atol=1e-6)
    bent = Cameras(c2w, shared.intrinsics.clone(), 16, 12, "opencv",
                   torch.tensor([[0.2, 0, 0, 0, 0, 0]]).repeat(3, 1))
    _, d3 = bent.rays(px, py, cam)
    assert (d3 - d1).abs().max() > 1e-3
    o_img, d_img = shared.image_rays(1)
    assert o_img.shape == (16 * 12, 3) and torch.allclose(o_img, c2w[1, :3, 3].expand(192, 3))
    unit = shared.transformed(0.5, (0.5, 0.5, 0.5))
    assert torch.allclose(unit.c2w[:, :3, 3], c2w[:, :3, 3] * 0.5 + 0.5)
    assert torch.equal(unit.c2w[:, :3, :3], c2w[:, :3, :3])
    with pytest.raises(ValueError, match="intrinsics"):
        Cameras(c2w, torch.zeros(2, 4), 16, 12)


def test_saving_a_training_runs_scene_keeps_the_ema_weights(tmp_path, capsys):
    """The scene of a run in training keeps its EMA weights apart; saved, the file holds those
    (not the training weights), and saving leaves the training weights in place."""
    trainer = Trainer(make_config("cpu", TINY), tmp_path / "run")
    for _ in range(3):
        trainer.train_step()
    training = [p.detach().clone() for p in trainer.field.parameters()]
    ema = [e.clone() for e in trainer.ema]
    assert any(not torch.equal(a, b) for a, b in zip(training, ema))
    saved = TrainedScene.load(trainer.scene.save(tmp_path / "scene.pt"))
    for p, e in zip(saved.field.parameters(), ema, strict=True):
        assert torch.equal(p, e)
    for p, t in zip(trainer.field.parameters(), training, strict=True):
        assert torch.equal(p, t)
    assert saved.step == 3 and torch.equal(saved.occupancy.bitfield, trainer.occupancy.bitfield)
    assert main(["eval", str(tmp_path / "scene.pt")]) == 2  # the CLI takes run folders
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["opencv", "fisheye"])
def test_pixel_centre_table_gives_the_rays_of_newtons_inversion(model):
    """Cameras with a lens look pixel centres up in a table of undistorted coordinates, one per
    distinct lens: the rays equal those of inverting the lens per ray, bit for bit, for cameras
    sharing a lens and cameras with their own; a table over the byte limit is not built."""
    gen = torch.Generator().manual_seed(7)
    n, width, height = 5, 37, 23
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, :3] = torch.linalg.qr(torch.randn(n, 3, 3, generator=gen))[0]
    c2w[:, :3, 3] = torch.randn(n, 3, generator=gen)
    intrinsics = torch.tensor([30.0, 31.5, 18.2, 11.7], dtype=torch.float64).repeat(n, 1)
    intrinsics[3:, 0] = 28.0  # two more lenses: cameras 3 and 4 have their own focal length
    intrinsics[4, 3] = 12.1
    coeffs = ([-0.21, 0.05, 0.004, 0, 1e-3, -5e-4] if model == "opencv"
              else [0.03, -0.006, 0.002, -4e-4, 0, 0])
    distortion = torch.tensor(coeffs).repeat(n, 1)
    distortion[4, 0] *= 0.5
    cameras = Cameras(c2w, intrinsics, width, height, model, distortion)
    lens_of, table = cameras.centre_table()
    assert table.shape == (3, height, width, 2)
    assert lens_of[0] == lens_of[1] == lens_of[2] and len({int(v) for v in lens_of[2:]}) == 3
    m = 400
    cam = torch.randint(0, n, (m,), generator=gen)
    col = torch.randint(0, width, (m,), generator=gen)
    row = torch.randint(0, height, (m,), generator=gen)
    origins, directions = cameras.centre_rays(col, row, cam)
    want_o, want_d = camera_rays(c2w, intrinsics.float(), distortion, model, col.float() + 0.5,
                                 row.float() + 0.5, cam)
    assert torch.equal(origins, want_o) and torch.equal(directions, want_d)
    # a whole image through the table equals the image inverted per pixel
    fresh = Cameras(c2w, intrinsics, width, height, model, distortion)
    assert torch.equal(cameras.image_rays(4)[1], fresh.image_rays(4)[1])
    assert fresh.centre_table(max_bytes=3 * height * width * 8 - 1) is None
    torch.testing.assert_close(fresh.centre_rays(col, row, cam)[1], want_d, rtol=0, atol=0)
    # without a lens there is no table, and centres are the pinhole rays
    plain = Cameras(c2w, intrinsics, width, height)
    assert plain.centre_table() is None
    assert torch.equal(plain.centre_rays(col, row, cam)[1],
                       plain.rays(col.float() + 0.5, row.float() + 0.5, cam)[1])
