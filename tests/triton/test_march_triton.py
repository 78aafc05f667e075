"""Triton ray marching (nerfmine.ops._triton.march) vs the PyTorch reference.

The kernels reproduce the reference's fp32 expressions without contracted multiply-adds, so
every field (integer and float) is expected to be bit-identical, not merely close.
"""

from __future__ import annotations

import math

import pytest
import torch

from nerfmine.ops.march import march_rays

pytestmark = pytest.mark.interpreter

FIELDS = ("positions", "directions", "t", "dt", "ray_ids", "ray_starts", "ray_counts",
          "ray_valid", "n_samples")


def _rays(n_rays, seed):
    """Rays of every kind: from outside aimed into the cube, from inside, axis-parallel, missing."""
    gen = torch.Generator().manual_seed(seed)
    targets = torch.rand(n_rays, 3, generator=gen) * 0.8 + 0.1
    origins = torch.randn(n_rays, 3, generator=gen)
    origins = 0.5 + 1.2 * origins / origins.norm(dim=-1, keepdim=True)  # outside the cube
    inside = torch.rand(n_rays, generator=gen) < 0.3
    origins[inside] = torch.rand(int(inside.sum()), 3, generator=gen)
    directions = torch.nn.functional.normalize(targets - origins + 1e-3, dim=-1)
    if n_rays >= 4:
        origins[0] = torch.tensor([0.3, 0.6, -0.5])  # along +z, axis-parallel
        directions[0] = torch.tensor([0.0, 0.0, 1.0])
        origins[1] = torch.tensor([2.0, 2.0, 2.0])  # pointing away: misses
        directions[1] = torch.nn.functional.normalize(torch.ones(3), dim=0)
        origins[2] = torch.tensor([0.25, -1.0, 0.75])  # along +y from outside
        directions[2] = torch.tensor([0.0, 1.0, 0.0])
    jitter = torch.rand(n_rays, generator=gen)
    return origins, directions, jitter


def _grid(res, frac, seed):
    gen = torch.Generator().manual_seed(seed + 100)
    return torch.rand(res, res, res, generator=gen) < frac


def _assert_identical(out, ref):
    assert out.n_rays == ref.n_rays
    for name in FIELDS:
        a, b = getattr(out, name).cpu(), getattr(ref, name).cpu()  # a reference may be on CPU
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), f"{name} differs at {(a != b).nonzero()[:5].tolist()}"


@pytest.mark.parametrize("n_rays", [1, 5, 13])
@pytest.mark.parametrize("use_jitter", [False, True])
def test_matches_reference_exact_size(device, n_rays, use_jitter):
    origins, directions, jitter = _rays(n_rays, seed=n_rays)
    occupancy = _grid(16, 0.3, seed=n_rays)
    args = (origins.to(device), directions.to(device), occupancy.to(device))
    kw = dict(step_size=math.sqrt(3) / 64, max_steps=48, capacity=None,
              jitter=jitter.to(device) if use_jitter else None)
    ref = march_rays(*args, **kw, backend="torch")
    out = march_rays(*args, **kw, backend="triton")
    _assert_identical(out, ref)
    if n_rays >= 5:
        assert ref.n_samples.item() > 0  # the test must exercise something


@pytest.mark.parametrize("block", [16, 128])
def test_max_steps_truncates(device, block):
    """A small max_steps cuts rays before they leave the cube (also across chunk boundaries)."""
    from nerfmine.ops._triton.march import march_rays_triton

    origins, directions, jitter = _rays(13, seed=3)
    occupancy = _grid(16, 0.6, seed=3)
    for max_steps in (0, 1, 17, 40, 300):
        args = (origins.to(device), directions.to(device), occupancy.to(device))
        ref = march_rays(*args, step_size=0.01, max_steps=max_steps, capacity=None,
                         jitter=jitter.to(device))
        out = march_rays_triton(*args, step_size=0.01, max_steps=max_steps, capacity=None,
                                jitter=jitter.to(device), block=block)
        _assert_identical(out, ref)
    # With 300 steps of 0.01 rays leave the cube (~173 candidates): several candidate chunks.
    assert ref.ray_counts.max().item() > 60


@pytest.mark.parametrize("capacity_frac", [0.0, 0.45, 1.0, 1.7])
def test_capacity_overflow_and_padding(device, capacity_frac):
    origins, directions, jitter = _rays(13, seed=7)
    occupancy = _grid(16, 0.3, seed=7)
    args = (origins.to(device), directions.to(device), occupancy.to(device))
    kw = dict(step_size=math.sqrt(3) / 64, max_steps=48, jitter=jitter.to(device))
    total = march_rays(*args, **kw, capacity=None).n_samples.item()
    assert total > 20
    capacity = int(total * capacity_frac)
    ref = march_rays(*args, **kw, capacity=capacity, backend="torch")
    out = march_rays(*args, **kw, capacity=capacity, backend="triton")
    _assert_identical(out, ref)
    assert out.capacity == capacity
    n = out.n_samples.item()
    if capacity_frac < 1.0:
        assert not out.ray_valid.all()  # some rays were dropped whole
    # The padding contract.
    assert (out.dt[n:] == 0).all() and (out.t[n:] == 0).all()
    assert (out.ray_ids[n:] == out.n_rays).all()
    assert (out.positions[n:] == 0.5).all()
    assert (out.directions[n:] == torch.tensor([0.0, 0.0, 1.0], device=device)).all()
    dropped = ~out.ray_valid
    assert (out.ray_counts[dropped] == 0).all() and (out.ray_starts[dropped] == n).all()
    assert (out.ray_valid[out.ray_counts > 0]).all()


def test_dense_and_empty_grids(device):
    origins, directions, jitter = _rays(5, seed=11)
    full = torch.ones(4, 4, 4, dtype=torch.bool)
    for occupancy in (full, ~full):
        args = (origins.to(device), directions.to(device), occupancy.to(device))
        kw = dict(step_size=0.05, max_steps=40, capacity=64, jitter=jitter.to(device))
        _assert_identical(march_rays(*args, **kw, backend="triton"), march_rays(*args, **kw))


def test_no_rays(device):
    empty = torch.zeros(0, 3, device=device)
    occupancy = torch.ones(4, 4, 4, dtype=torch.bool, device=device)
    for capacity in (None, 8):
        ref = march_rays(empty, empty, occupancy, 0.05, 10, capacity)
        out = march_rays(empty, empty, occupancy, 0.05, 10, capacity, backend="triton")
        _assert_identical(out, ref)


@pytest.mark.parametrize("n_active", [0, 5, 33])
def test_n_active_matches_reference(device, n_active):
    origins, directions, jitter = _rays(33, seed=11)
    grid = _grid(16, 0.4, seed=11)
    kw = dict(step_size=0.02, max_steps=96, capacity=1500,
              n_active=torch.tensor(n_active, device=device))
    args = [t.to(device) for t in (origins, directions, grid)]
    out = march_rays(*args, jitter=jitter.to(device), backend="triton", **kw)
    ref = march_rays(origins, directions, grid, jitter=jitter, backend="torch",
                     **(kw | {"n_active": torch.tensor(n_active)}))
    _assert_identical(out, ref)
    assert not out.ray_valid[n_active:].any()


def _large_scene(n_rays, seed, aabb_scale):
    """Rays through the box 0.5 +- aabb_scale / 2: from outside, from inside, axis-parallel."""
    gen = torch.Generator().manual_seed(seed)
    half = aabb_scale / 2
    origins = 0.5 + half * 1.4 * torch.nn.functional.normalize(
        torch.randn(n_rays, 3, generator=gen), dim=-1)
    inside = torch.rand(n_rays, generator=gen) < 0.3
    origins[inside] = 0.5 + (torch.rand(int(inside.sum()), 3, generator=gen) - 0.5) * 2 * half
    targets = 0.5 + (torch.rand(n_rays, 3, generator=gen) - 0.5) * half
    directions = torch.nn.functional.normalize(targets - origins + 1e-3, dim=-1)
    if n_rays >= 3:
        origins[0] = torch.tensor([0.3, 0.6, 0.5 - half - 0.4])
        directions[0] = torch.tensor([0.0, 0.0, 1.0])
        origins[1] = torch.tensor([0.5 + half + 1, 0.7, 0.2])
        directions[1] = torch.tensor([-1.0, 0.0, 0.0])
    return origins, directions, torch.rand(n_rays, generator=gen)


def _cascade_grid(n_cascades, res, frac, seed):
    gen = torch.Generator().manual_seed(seed + 200)
    blocks = torch.rand(n_cascades, res // 4, res // 4, res // 4, generator=gen) < frac
    grid = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)
    return grid | (torch.rand(grid.shape, generator=gen) < frac / 4)  # plus lone cells


@pytest.mark.parametrize(("n_rays", "aabb_scale", "cone", "capacity"), [
    (1, 2.0, 0.03, None),
    (13, 4.0, 0.03, None),
    (13, 4.0, 0.03, 150),
    (67, 3.0, 0.05, 400),  # many rays, some dropped for capacity
    (13, 4.0, 0.0, None),  # cascades with constant steps
    (13, 4.0, 0.0, 90),
    (13, 16.0, 0.05, None),
])
def test_cascades_and_exponential_steps_match_reference(device, n_rays, aabb_scale, cone,
                                                        capacity):
    from nerfmine.ops.scene_box import cascades_for_aabb_scale

    origins, directions, jitter = _large_scene(n_rays, seed=n_rays, aabb_scale=aabb_scale)
    grid = _cascade_grid(cascades_for_aabb_scale(aabb_scale), 12, 0.3, seed=n_rays)
    # Interpreted walks are slow: coarse steps, and cone angles above instant-ngp's 1/256 (the
    # value does not change the code path), keep them short.
    kw = dict(step_size=0.06, max_steps=40, capacity=capacity, jitter=jitter,
              aabb_scale=aabb_scale, cone_angle=cone, max_step_size=0.4)
    ref = march_rays(origins, directions, grid, **kw, backend="torch")
    kw["jitter"] = jitter.to(device)
    out = march_rays(origins.to(device), directions.to(device), grid.to(device), **kw,
                     backend="triton")
    _assert_identical(out, ref)
    assert ref.n_samples.item() > 0
    if cone > 0 and n_rays > 1:
        n = ref.n_samples.item()
        assert (ref.dt[:n] > ref.dt[:n].min()).any()  # the steps did grow


def test_exponential_steps_with_n_active(device):
    origins, directions, jitter = _large_scene(20, seed=5, aabb_scale=4.0)
    grid = _cascade_grid(3, 8, 0.4, seed=5)
    kw = dict(step_size=0.06, max_steps=30, capacity=300, aabb_scale=4.0, cone_angle=1 / 256)
    ref = march_rays(origins, directions, grid, jitter=jitter, n_active=torch.tensor(7), **kw)
    out = march_rays(origins.to(device), directions.to(device), grid.to(device),
                     jitter=jitter.to(device), n_active=torch.tensor(7, device=device),
                     backend="triton", **kw)
    _assert_identical(out, ref)
    assert not ref.ray_valid[7:].any() and (ref.ray_counts[7:] == 0).all()
    assert ref.ray_counts[:7].sum() > 0


def test_exponential_march_continued_from_k_start(device):
    """Candidates from per-ray start indices, and the candidate after each ray's last sample
    (ray_next, which the renderer continues from), as the reference gives them."""
    origins, directions, _ = _large_scene(13, seed=8, aabb_scale=4.0)
    grid = _cascade_grid(3, 8, 0.4, seed=8)
    k_start = torch.randint(0, 40, (13,), generator=torch.Generator().manual_seed(1))
    kw = dict(step_size=0.06, max_steps=25, capacity=None, aabb_scale=4.0, cone_angle=0.03)
    ref = march_rays(origins, directions, grid, k_start=k_start, **kw)
    out = march_rays(origins.to(device), directions.to(device), grid.to(device),
                     k_start=k_start.to(device), backend="triton", **kw)
    _assert_identical(out, ref)
    assert torch.equal(out.ray_next.cpu(), ref.ray_next)
    assert ref.n_samples.item() > 0 and (ref.ray_next >= k_start).all()
