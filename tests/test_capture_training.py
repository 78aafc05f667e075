"""A real capture (instant-ngp's fox, COLMAP poses with OpenCV distortion) trains end to end
on the CPU at a high downscale: the CI smoke run of the real-capture path."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import shared_data_dir

from nerfmine.config import make_config
from nerfmine.scene import TrainedScene
from nerfmine.trainer import Trainer

SHARED = shared_data_dir()
pytestmark = pytest.mark.skipif(
    SHARED is None or not (SHARED / "fox" / "transforms.json").is_file(),
    reason="../shared/data/fox is not present (set NERFMINE_SHARED_DATA to its data folder)")


def test_fox_trains_with_the_every_eighth_holdout(tmp_path):
    # Small enough for a CPU: 3 cascades of 32^3 cells, at most 256 samples per ray.
    config = make_config("cpu", {"data": {"path": str(SHARED / "fox"), "downscale": 16},
                                 "model": {"log2_table_size": 12, "n_levels": 8},
                                 "occupancy": {"resolution": 32},
                                 "train": {"max_steps": 17, "target_samples": 4096},
                                 "march": {"max_steps_per_ray": 256},
                                 "eval": {"max_images": 1, "save_renders": False}})
    trainer = Trainer(config, tmp_path)
    assert len(trainer.train_data) == 43 and len(trainer.eval_data) == 7
    assert trainer.train_data.camera_model == "opencv"
    # The fox's aabb_scale 4: the box [-1.5, 2.5]^3, 3 cascades, instant-ngp's cone angle 1/256.
    assert any("aabb_scale 4: 3 occupancy cascades" in note for note in trainer.notes)
    assert trainer.occupancy.bitfield.shape == (3, 32, 32, 32)
    assert trainer.field.aabb_scale == 4.0
    metrics = trainer.train()
    assert metrics["steps"] == 17 and math.isfinite(metrics["psnr"])
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["aabb_scale"] == 4.0 and saved["occupancy"]["cascades"] == 3
    assert saved["march"]["cone_angle"] == 1 / 256
    # Samples of a training batch lie in the box and their steps grow with distance.
    batch = trainer.step_fn.rays.draw(256, trainer.generator, trainer.step)
    samples = trainer.step_fn.march(batch.origins, batch.directions, batch.jitter)
    n = int(samples.n_samples)
    assert n > 0 and ((samples.positions[:n] >= -1.5) & (samples.positions[:n] <= 2.5)).all()
    assert samples.dt[:n].max() > samples.dt[:n].min()
    # A run loads back for rendering with the same box and cascades.
    loaded = TrainedScene.load(tmp_path)
    assert loaded.aabb_scale == 4.0 and loaded.occupancy.n_cascades == 3
    assert torch.equal(loaded.occupancy.bitfield, trainer.occupancy.bitfield)


def test_missing_frames_are_reported_and_can_be_skipped(tmp_path):
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # The unit cube only (a config override of the capture's aabb_scale 4): this test is about
    # missing frames, and one step of a run with cascades renders long rays through an
    # untrained grid (the other fox test covers cascades).
    overrides = tmp_path / "overrides.json"
    overrides.write_text(json.dumps({"data": {"aabb_scale": 1}}))
    cmd = [sys.executable, "-m", "nerfmine.cli", "train",
           str(SHARED / "fox" / "transforms_all_frames.json"), "--steps", "1", "--downscale", "8",
           "--eval-images", "1", "--output", str(tmp_path / "run"), "--quiet",
           "--config", str(overrides)]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "17 of 67" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    done = subprocess.run(cmd + ["--skip-missing"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "17" in done.stdout  # the note on skipped frames
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["aabb_scale"] == 1 and saved["occupancy"]["cascades"] == 1
    assert saved["march"]["cone_angle"] == 0
