"""A hand-built field for the viewer tests: opaque grey wherever the occupancy grid is occupied,
with one small block of the grid occupied, so what a camera sees is the block's projection (in
a known place, and quick to render on a CPU)."""

from __future__ import annotations

import math

import numpy as np
import torch

from nerfmine.config import make_config, resolve_for_scene
from nerfmine.scene import TrainedScene

TINY = {
    "model": {"log2_table_size": 12, "n_levels": 8, "max_resolution": 256},
    "occupancy": {"resolution": 32},
    "train": {"max_steps": 3, "target_samples": 2048, "initial_rays": 128},
    # a coarser march than instant-ngp's keeps the CPU renders quick
    "march": {"max_steps_per_ray": 128, "step_size": math.sqrt(3) / 128},
    "eval": {"max_images": 1},
}


def block_scene() -> TrainedScene:
    """A scene of the demo scene's config (no images loaded) with the opaque grey field; it
    keeps EMA weights apart, as a training run's scene does."""
    torch.set_num_threads(2)
    config, _ = resolve_for_scene(make_config("cpu", TINY), None)
    trainer = TrainedScene.create(config, with_ema=True)
    with torch.no_grad():
        f = trainer.field
        f.table.fill_(1.0)
        f.density_w1.fill_(1.0 / f.density_w1.shape[1])
        f.density_w2.zero_()
        f.density_w2[0].fill_(10.0 / f.density_w2.shape[1])  # log-density 10: opaque
        for w in (f.color_w1, f.color_w2, f.color_w3):
            w.zero_()  # sigmoid(0): grey
        for e, p in zip(trainer.ema, f.parameters()):
            e.copy_(p)
    return trainer


def set_block(trainer: TrainedScene, center_unit, half: float = 0.08) -> None:
    """Occupy only the cells of a cube of half-size ``half`` around ``center_unit``."""
    res = trainer.occupancy.bitfield.shape[0]
    lo = [int((c - half) * res) for c in center_unit]
    hi = [int(math.ceil((c + half) * res)) for c in center_unit]
    trainer.occupancy.bitfield.zero_()
    trainer.occupancy.bitfield[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True


def world(trainer: TrainedScene, unit) -> np.ndarray:
    d = trainer.config.data
    return (np.asarray(unit, dtype=np.float64) - np.asarray(d.offset)) / d.scale
