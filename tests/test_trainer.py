"""The trainer's state: checkpoints, bit-exact resume, interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nerfmine.config import make_config
from nerfmine.trainer import Trainer

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = {"model": {"log2_table_size": 12, "n_levels": 8, "max_resolution": 256},
        "occupancy": {"resolution": 32, "update_interval": 4, "warmup_steps": 8},
        "train": {"target_samples": 2048, "initial_rays": 128, "checkpoint_every": 1e9},
        "eval": {"max_images": 1}}


def _config(mining: str, **train):
    overrides = json.loads(json.dumps(TINY))
    overrides["mining"] = mining
    overrides["train"].update(train)
    return make_config("cpu", overrides)


@pytest.mark.parametrize("mining", ["hsm", "none"])
def test_resume_is_bit_exact(mining, tmp_path):
    """12 steps in one go equal 6 steps, a checkpoint, a new process' worth of state, 6 more."""
    config = _config(mining, max_steps=12)
    straight = Trainer(config, tmp_path / "a")
    for _ in range(12):
        straight.train_step()

    first = Trainer(config, tmp_path / "b")
    (tmp_path / "b").mkdir()
    for _ in range(6):
        first.train_step()
    first.save()
    del first
    resumed = Trainer.resume(tmp_path / "b")
    assert resumed.step == 6
    for _ in range(6):
        resumed.train_step()

    for (name, p), q in zip(straight.field.named_parameters(), resumed.field.parameters()):
        assert torch.equal(p, q), name
    for e, f in zip(straight.ema, resumed.ema):
        assert torch.equal(e, f)
    assert torch.equal(straight.occupancy.density, resumed.occupancy.density)
    assert torch.equal(straight.miner.tau_bar, resumed.miner.tau_bar)
    assert straight.n_rays == resumed.n_rays


def test_train_writes_the_run_folder(tmp_path):
    config = _config("hsm", max_steps=10, eval_at=[5])
    metrics = Trainer(config, tmp_path / "run").train()
    run = tmp_path / "run"
    for name in ("config.json", "checkpoint.pt", "metrics.json", "psnr_curve.png"):
        assert (run / name).is_file(), name
    assert len(list((run / "renders" / "test").glob("*.png"))) == 1
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["steps"] == 10 and saved["split"] == "test" and saved["background"] == "white"
    assert [c["step"] for c in saved["curve"]] == [5, 10]
    assert 0 < saved["mean_hard_fraction"] <= 0.5
    assert saved["lpips"].startswith("not measured")
    assert metrics["psnr"] == pytest.approx(saved["per_image"][0]["psnr"])


def test_resume_rejects_a_changed_model(tmp_path):
    from nerfmine.errors import ConfigError

    config = _config("hsm", max_steps=2)
    Trainer(config, tmp_path).train()
    with pytest.raises(ConfigError, match="model.log2_table_size"):
        Trainer.resume(tmp_path, {"model": {"log2_table_size": 13}})
    longer = Trainer.resume(tmp_path, {"train": {"max_steps": 4}})  # a new budget is fine
    assert longer.config.train.max_steps == 4 and longer.step == 2


def test_resume_of_a_run_from_before_subpixel_keeps_its_random_points(tmp_path):
    """A checkpoint written before train.subpixel existed trained on random points of its
    pixels; resuming it keeps doing so (the default for new runs is the pixel centre)."""
    from nerfmine.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

    Trainer(_config("none", max_steps=2), tmp_path).train()
    path = tmp_path / CHECKPOINT_NAME
    state = load_checkpoint(path)
    del state["config"]["train"]["subpixel"]
    save_checkpoint(path, state)
    assert Trainer.resume(tmp_path).config.train.subpixel is True
    fresh = Trainer(_config("none", max_steps=2), tmp_path / "new")
    assert fresh.config.train.subpixel is False


def test_sigterm_leaves_a_loadable_checkpoint_and_resume_finishes(tmp_path):
    """Kill a real training process; it checkpoints, exits 130, and --resume completes it."""
    overrides = json.loads(json.dumps(TINY))
    overrides["train"]["checkpoint_every"] = 0.5
    cfg = tmp_path / "overrides.json"
    cfg.write_text(json.dumps(overrides))
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "nerfmine.cli", "train", "--preset", "cpu", "--steps", "100000",
           "--config", str(cfg), "--output", str(run), "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (run / "checkpoint.pt").exists(), proc.stderr.read() if proc.poll() else "timeout"
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not list(run.glob("*.tmp"))
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    step = state["step"]
    assert step > 0
    done = subprocess.run(
        [sys.executable, "-m", "nerfmine.cli", "train", "--resume", str(run), "--steps",
         str(step + 3), "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "metrics.json").read_text())["steps"] == step + 3


@pytest.mark.parametrize("subpixel", [False, True])
def test_training_rays_go_through_pixel_centres_unless_subpixel(subpixel, tmp_path):
    """train.subpixel False (the default): every training ray passes through the centre of the
    pixel whose colour it is fitted to, as evaluation renders; True: through a random point of
    that pixel (instant-ngp)."""
    trainer = Trainer(_config("none", max_steps=1, subpixel=subpixel), tmp_path)
    seen = {}
    sampler = trainer.step_fn.rays
    cameras = sampler.cameras

    class Spy:
        def rays(self, px, py, cam):
            seen["px"], seen["py"] = px, py
            return cameras.rays(px, py, cam)

        def centre_rays(self, col, row, cam):  # the lookup of pixel centres (cameras.py)
            seen["px"], seen["py"] = col.float() + 0.5, row.float() + 0.5
            return cameras.centre_rays(col, row, cam)

    sampler.cameras = Spy()
    sampler.draw(512, trainer.generator, step=0)
    frac = torch.cat([seen["px"], seen["py"]]) % 1.0
    if subpixel:
        assert frac.min() < 0.25 and frac.max() > 0.75  # spread over the pixel
    else:
        assert torch.all(frac == 0.5)
    width, height = trainer.train_data.width, trainer.train_data.height
    assert seen["px"].min() >= 0 and seen["px"].max() <= width
    assert seen["py"].min() >= 0 and seen["py"].max() <= height



def test_max_resolution_override_reaches_the_field_and_config(tmp_path):
    config = make_config("cpu", {**json.loads(json.dumps(TINY)),
                                 "model": {"log2_table_size": 12, "n_levels": 8,
                                           "max_resolution": 96},
                                 "train": {"max_steps": 1}})
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.field.spec.max_resolution == 96
    trainer.config.save(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["model"]["max_resolution"] == 96
