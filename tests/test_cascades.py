"""Occupancy cascades and exponential stepping (issue 5): the reference marcher and grid.

The Triton twin is compared in tests/triton/test_march_triton.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nerfmine.occupancy import OccupancyConfig, OccupancyGrid
from nerfmine.ops.march import (
    _cascade_cells,
    aabb_bounds,
    cascades_for_aabb_scale,
    default_max_step_size,
    march_rays,
)

FIXTURE = Path(__file__).parent / "data" / "k1_regression.pt"
FIELDS = ("positions", "directions", "t", "dt", "ray_ids", "ray_starts", "ray_counts",
          "ray_valid", "n_samples")


def _fixture_inputs():
    """The inputs tests/data/k1_regression.pt was made from (commit f8af1a0, before cascades)."""
    g = torch.Generator().manual_seed(1234)
    n = 37
    origins = 0.5 + 1.3 * torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    origins[::4] = torch.rand(len(origins[::4]), 3, generator=g)
    targets = torch.rand(n, 3, generator=g) * 0.8 + 0.1
    directions = torch.nn.functional.normalize(targets - origins + 1e-3, dim=-1)
    directions[5] = torch.tensor([0.0, 0.0, 1.0])
    origins[5] = torch.tensor([0.3, 0.6, -0.5])
    jitter = torch.rand(n, generator=g)
    occ = torch.rand(16, 16, 16, generator=g) < 0.35
    return origins, directions, jitter, occ


def test_one_cascade_reproduces_the_marcher_and_grid_before_cascades():
    """Explicit regression: K = 1 and cone_angle 0 give today's results bit for bit."""
    old = torch.load(FIXTURE)
    o, d, j, occ = _fixture_inputs()
    for name, kw in {"exact": dict(capacity=None, jitter=j),
                     "cap": dict(capacity=300, jitter=None)}.items():
        for extra in ({}, dict(aabb_scale=1.0, cone_angle=0.0),
                      dict(aabb_scale=1.0, cone_angle=0.0)):
            s = march_rays(o, d, occ, step_size=math.sqrt(3) / 128, max_steps=150, **kw, **extra)
            for f in FIELDS:
                assert torch.equal(getattr(s, f), old[name][f]), (name, f)
        # The same grid given as one cascade [1, res, res, res].
        s = march_rays(o, d, occ[None], step_size=math.sqrt(3) / 128, max_steps=150, **kw)
        for f in FIELDS:
            assert torch.equal(getattr(s, f), old[name][f]), (name, f, "[1, res^3]")
    grid = OccupancyGrid(OccupancyConfig(resolution=16))
    assert grid.n_cascades == 1 and grid.bitfield.shape == (16, 16, 16)
    gen = torch.Generator().manual_seed(7)
    vis = torch.rand(16**3, generator=gen) < 0.9
    grid.set_visible(vis)
    for step in (0, 16, 256, 272):
        grid.update(step, lambda p: 30.0 * torch.exp(-((p - 0.4) ** 2).sum(-1) / 0.02), gen)
    for key, value in old["grid"].items():
        assert torch.equal(grid.state_dict()[key], value), key
