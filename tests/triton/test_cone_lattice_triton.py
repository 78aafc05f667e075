"""Triton lattice parameters vs the PyTorch reference nerfmine.ops.cone_lattice.lattice_params."""

from __future__ import annotations

import math

import pytest
import torch

from nerfmine.ops.cone_lattice import lattice_params
from nerfmine.ops.scene_box import fp32

pytestmark = pytest.mark.interpreter

SETTINGS = [  # (step a, cone angle c, largest step b)
    (math.sqrt(3) / 1024, 1 / 256, math.sqrt(3)),  # instant-ngp's large scenes
    (math.sqrt(3) / 1024, 1 / 256, math.sqrt(3) * 8 / 128),  # a smaller largest step
    (0.01, 0.05, 0.3),  # few candidates per regime
]


@pytest.mark.parametrize("a,c,b", SETTINGS)
@pytest.mark.parametrize("n", [1, 37, 700])
def test_parameters_match_the_reference_bit_for_bit(device, a, c, b, n):
    from nerfmine.ops._triton.cone_lattice import lattice_params_triton

    a, c, b = fp32(a), fp32(c), fp32(b)
    g = torch.Generator().manual_seed(n)
    # Rays starting in every regime: at 0, below a / c, between a / c and b / c, beyond.
    t_near = torch.cat([torch.zeros(1), torch.rand(n, generator=g) ** 3 * 4 * b / c])[:n]
    jitter = torch.rand(n, generator=g)
    jitter[-1] = 0.0
    ref = lattice_params(t_near, jitter, a, c, b)
    out = lattice_params_triton(t_near.to(device), jitter.to(device), a, c, b)
    for name in ("t0", "k_a", "t_b", "k_b", "t_c"):
        got, want = getattr(out, name).cpu(), getattr(ref, name)
        assert got.dtype == want.dtype and torch.equal(got, want), name
    # Every regime occurs among the rays of the larger draws.
    if n >= 37:
        assert (ref.k_a > 0).any() and (ref.k_b > ref.k_a).any()
        assert (ref.t_b >= fp32(b) / fp32(c)).any()


def test_no_rays(device):
    from nerfmine.ops._triton.cone_lattice import lattice_params_triton

    out = lattice_params_triton(torch.zeros(0, device=device), torch.zeros(0, device=device),
                                0.01, 0.05, 0.3)
    assert out.t0.shape == (0,) and out.k_b.dtype == torch.int64
