"""--images-on-host: pixels gathered on the host equal the device path's, training runs, and a
resumed run draws what the uninterrupted one draws."""

from __future__ import annotations

import json

import torch

from nerfmine.config import make_config
from nerfmine.data.host_pixels import HostPixels, step_seed
from nerfmine.trainer import Trainer

TINY = {"model": {"log2_table_size": 11, "n_levels": 4, "max_resolution": 64},
        "occupancy": {"resolution": 16, "update_interval": 2, "warmup_steps": 4},
        "train": {"target_samples": 1024, "initial_rays": 64, "checkpoint_every": 1e9,
                  "max_steps": 8},
        "eval": {"max_images": 1},
        "data": {"images_on_host": True}}


def _config(**data):
    overrides = json.loads(json.dumps(TINY))
    overrides["data"].update(data)
    return make_config("cpu", overrides)


def test_host_gather_equals_the_device_gather():
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 5, 7, 4), dtype=torch.uint8, generator=gen)
    pixels = HostPixels(images, "cpu", seed=0)
    cam = torch.randint(0, 3, (50,), generator=gen)
    col = torch.randint(0, 7, (50,), generator=gen)
    row = torch.randint(0, 5, (50,), generator=gen)
    c, x, y, rgba = pixels.gather(cam, col, row)
    device_images = images.to("cpu")  # the device path indexes the uploaded tensor like this
    assert torch.equal(rgba, device_images[cam, row, col])
    assert torch.equal(c, cam) and torch.equal(x, col) and torch.equal(y, row)


def test_draws_are_deterministic_per_step():
    images = torch.zeros(4, 6, 8, 4, dtype=torch.uint8)
    a, b = HostPixels(images, "cpu", seed=3), HostPixels(images, "cpu", seed=3)
    first = a.draw(100, step=5)
    a.draw(100, step=6)
    assert all(torch.equal(p, q) for p, q in zip(first, b.draw(100, step=5)))
    assert not torch.equal(first[0], b.draw(100, step=6)[0])
    assert step_seed(3, 5) != step_seed(3, 6) != step_seed(4, 5)


def test_trainer_keeps_images_on_the_host_and_trains(tmp_path):
    trainer = Trainer(_config(), tmp_path)
    sampler = trainer.step_fn.rays
    assert sampler.on_host and sampler.host_pixels is not None
    assert trainer.config.data.images_on_host
    cam, col, row, pixels = sampler.host_pixels.draw(32, step=0)
    assert torch.equal(pixels, trainer.train_data.images[cam, row, col])
    losses = [float(trainer.train_step().loss) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))


def test_resume_with_images_on_host_is_bit_exact(tmp_path):
    config = _config()
    straight = Trainer(config, tmp_path / "a")
    for _ in range(6):
        straight.train_step()
    first = Trainer(config, tmp_path / "b")
    (tmp_path / "b").mkdir()
    for _ in range(3):
        first.train_step()
    first.save()
    del first
    resumed = Trainer.resume(tmp_path / "b")
    assert resumed.config.data.images_on_host and resumed.step == 3
    for _ in range(3):
        resumed.train_step()
    for p, q in zip(straight.field.parameters(), resumed.field.parameters()):
        assert torch.equal(p, q)
    assert straight.n_rays == resumed.n_rays
