"""A real capture (instant-ngp's fox, COLMAP poses with OpenCV distortion) trains end to end
on the CPU at a high downscale: the CI smoke run of the real-capture path."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_data_dir

from nerfmine.config import make_config
from nerfmine.trainer import Trainer

SHARED = shared_data_dir()
pytestmark = pytest.mark.skipif(
    SHARED is None or not (SHARED / "fox" / "transforms.json").is_file(),
    reason="../shared/data/fox is not present (set NERFMINE_SHARED_DATA to its data folder)")


def test_fox_trains_with_the_every_eighth_holdout(tmp_path):
    config = make_config("cpu", {"data": {"path": str(SHARED / "fox"), "downscale": 8},
                                 "model": {"log2_table_size": 12, "n_levels": 8},
                                 "train": {"max_steps": 20, "target_samples": 4096,
                                           "eval_max_images": 2, "save_renders": False}})
    trainer = Trainer(config, tmp_path)
    assert len(trainer.train_data) == 43 and len(trainer.eval_data) == 7
    assert trainer.train_data.camera_model == "opencv"
    assert any("aabb_scale" in note for note in trainer.notes)
    metrics = trainer.train()
    assert metrics["steps"] == 20 and math.isfinite(metrics["psnr"])


def test_missing_frames_are_reported_and_can_be_skipped(tmp_path):
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "nerfmine.cli", "train",
           str(SHARED / "fox" / "transforms_all_frames.json"), "--steps", "1", "--downscale", "8",
           "--eval-images", "1", "--output", str(tmp_path / "run"), "--quiet"]
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "17 of 67" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr
    done = subprocess.run(cmd + ["--skip-missing"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert "17" in done.stdout  # the note on skipped frames
