"""march_rays (torch reference) against a plain per-ray loop, and the packed layout contract."""

from __future__ import annotations

import contextlib

import pytest
import torch

from nerfmine.ops.march import march_rays
from nerfmine.ops.packed import PackedSamples
from nerfmine.ops.rays import ray_aabb

STEP = 0.03  # coarse steps keep the per-ray loop fast; the marcher does not care
MAX_STEPS = 80
RES = 8


def _rays(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed rays: from outside towards the cube, starting inside, and pointing away."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.full((n, 3), 0.5)
    outside = centre + torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 1.2
    aim = torch.rand(n, 3, generator=g)  # [n, 3]
    inside = torch.rand(n, 3, generator=g) * 0.8 + 0.1  # [n, 3]
    kind = torch.arange(n) % 3  # 0: towards the cube, 1: from inside, 2: away from it
    origins = torch.where((kind == 1)[:, None], inside, outside)
    directions = torch.where((kind == 0)[:, None], aim - outside, torch.randn(n, 3, generator=g))
    directions = torch.where((kind == 2)[:, None], outside - centre, directions)
    return origins, torch.nn.functional.normalize(directions, dim=-1)


def _occupancy(seed: int, fill: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(RES, RES, RES, generator=g) < fill  # [res, res, res]


def _loop_march(origins, directions, occupancy, jitter):
    """Plain per-ray, per-candidate loop in the same float32 arithmetic: [(t, position)] per ray."""
    t_near, t_far = ray_aabb(origins, directions, 0.0, 1.0)
    res = occupancy.shape[0]
    per_ray = []
    for r in range(origins.shape[0]):
        kept = []
        for k in range(MAX_STEPS):
            t = t_near[r] + (torch.tensor(float(k)) + jitter[r]) * STEP
            if not bool(t < t_far[r]):
                break
            pos = origins[r] + t * directions[r]
            ix, iy, iz = (int(v) for v in (pos * res).floor().long().clamp(0, res - 1))
            if bool(occupancy[ix, iy, iz]):
                kept.append((float(t), pos))
        per_ray.append(kept)
    return per_ray


@contextlib.contextmanager
def _no_host_sync():
    """Fail on the Python-level ways of reading device data back to the host."""

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation in a no-sync path")

    def getitem(self, index, _orig=torch.Tensor.__getitem__):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            refuse()
        return _orig(self, index)

    with pytest.MonkeyPatch.context() as mp:
        for name in ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__"):
            mp.setattr(torch.Tensor, name, refuse)
        mp.setattr(torch, "nonzero", refuse)
        mp.setattr(torch.Tensor, "__getitem__", getitem)
        yield


def _real(samples: PackedSamples) -> int:
    return int(samples.n_samples)


@pytest.mark.parametrize("n_rays", [1, 7, 13])
@pytest.mark.parametrize("jittered", [False, True])
def test_matches_per_ray_loop(n_rays, jittered):
    origins, directions = _rays(n_rays, seed=n_rays)
    occupancy = _occupancy(seed=n_rays)
    jitter = torch.rand(n_rays, generator=torch.Generator().manual_seed(3)) if jittered else None
    samples = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, jitter=jitter)
    u = jitter if jittered else torch.full((n_rays,), 0.5)
    expected = _loop_march(origins, directions, occupancy, u)

    assert samples.ray_counts.tolist() == [len(kept) for kept in expected]
    assert samples.ray_valid.all()
    for r, kept in enumerate(expected):
        lo = int(samples.ray_starts[r])
        hi = lo + len(kept)
        assert samples.ray_ids[lo:hi].tolist() == [r] * len(kept)
        if kept:
            torch.testing.assert_close(samples.t[lo:hi], torch.tensor([t for t, _ in kept]))
            torch.testing.assert_close(samples.positions[lo:hi], torch.stack([p for _, p in kept]))
            torch.testing.assert_close(
                samples.directions[lo:hi], directions[r].expand(len(kept), 3)
            )
            assert (samples.dt[lo:hi] == STEP).all()
    assert sum(len(k) for k in expected) > 0  # the case is not vacuous


def test_empty_rays_present_and_counted():
    origins, directions = _rays(13, seed=5)
    samples = march_rays(origins, directions, _occupancy(5), STEP, MAX_STEPS)
    # Rays of kind 2 point away from the cube from outside: they have no samples but are valid.
    away = torch.arange(13) % 3 == 2
    assert (samples.ray_counts[away] == 0).all()
    assert samples.ray_valid[away].all()
    assert (samples.ray_counts[~away] > 0).any()


def test_samples_lie_in_occupied_cells_inside_the_ray_segment():
    origins, directions = _rays(13, seed=11)
    occupancy = _occupancy(seed=11, fill=0.3)
    samples = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, capacity=4096)
    n = _real(samples)
    assert n > 0
    cell = (samples.positions[:n] * RES).floor().long()
    assert ((cell >= 0) & (cell < RES)).all()
    assert occupancy[cell[:, 0], cell[:, 1], cell[:, 2]].all()
    ids = samples.ray_ids[:n]
    expected = origins[ids] + samples.t[:n, None] * directions[ids]
    torch.testing.assert_close(samples.positions[:n], expected)
    t_near, t_far = ray_aabb(origins, directions, 0.0, 1.0)
    assert (samples.t[:n] > t_near[ids]).all() and (samples.t[:n] < t_far[ids]).all()


def test_full_occupancy_first_sample_at_jitter():
    origins, directions = _rays(7, seed=2)
    jitter = torch.rand(7, generator=torch.Generator().manual_seed(0))
    full = torch.ones(RES, RES, RES, dtype=torch.bool)
    samples = march_rays(origins, directions, full, STEP, MAX_STEPS, jitter=jitter)
    t_near, t_far = ray_aabb(origins, directions, 0.0, 1.0)
    hit = samples.ray_counts > 0
    first = samples.t[samples.ray_starts[hit]]
    torch.testing.assert_close(first, t_near[hit] + jitter[hit] * STEP)
    # Every candidate inside the segment is kept, up to max_steps.
    expected = ((t_far - t_near) / STEP - jitter).ceil().clamp(0, MAX_STEPS).long()
    assert (samples.ray_counts - expected).abs().max() <= 1  # rounding at the exit only
    assert hit.sum() >= 3


def test_ordering_and_contiguity():
    origins, directions = _rays(13, seed=8)
    samples = march_rays(origins, directions, _occupancy(8), STEP, MAX_STEPS, capacity=2048)
    n = _real(samples)
    ids = samples.ray_ids[:n]
    assert (ids[1:] >= ids[:-1]).all()  # rays in order, each contiguous
    starts = samples.ray_counts.cumsum(0) - samples.ray_counts
    assert samples.ray_starts.tolist() == starts.tolist()
    assert torch.bincount(ids, minlength=13).tolist() == samples.ray_counts.tolist()
    same_ray = ids[1:] == ids[:-1]
    t = samples.t[:n]
    gaps = t[1:][same_ray] - t[:-1][same_ray]
    assert (gaps > STEP * 0.999).all()  # increasing t, whole steps apart
    steps = gaps / STEP
    torch.testing.assert_close(steps, steps.round(), atol=1e-3, rtol=0)


def test_padding_contract():
    origins, directions = _rays(7, seed=4)
    samples = march_rays(origins, directions, _occupancy(4), STEP, MAX_STEPS, capacity=1000)
    n = _real(samples)
    assert 0 < n < 1000 and samples.capacity == 1000
    pad = slice(n, None)
    assert (samples.dt[pad] == 0).all() and (samples.t[pad] == 0).all()
    assert (samples.ray_ids[pad] == 7).all()
    assert (samples.positions[pad] == 0.5).all()
    assert (samples.directions[pad] == torch.tensor([0.0, 0.0, 1.0])).all()
    assert (samples.dt[:n] == STEP).all()
    assert samples.n_samples.dtype == torch.int64 and samples.n_samples.dim() == 0


def test_capacity_none_is_exact_and_matches_large_capacity():
    origins, directions = _rays(13, seed=9)
    occupancy = _occupancy(9)
    exact = march_rays(origins, directions, occupancy, STEP, MAX_STEPS)
    big = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, capacity=5000)
    n = _real(big)
    assert exact.capacity == n == _real(exact) == int(exact.ray_counts.sum())
    for name in ("positions", "directions", "t", "dt", "ray_ids"):
        assert torch.equal(getattr(exact, name), getattr(big, name)[:n]), name
    for name in ("ray_starts", "ray_counts", "ray_valid"):
        assert torch.equal(getattr(exact, name), getattr(big, name)), name


def test_overflow_drops_whole_rays():
    origins, directions = _rays(13, seed=12)
    occupancy = _occupancy(12)
    exact = march_rays(origins, directions, occupancy, STEP, MAX_STEPS)
    counts = exact.ray_counts
    nonempty = (counts > 0).nonzero().flatten().tolist()
    assert len(nonempty) >= 3
    victim = nonempty[len(nonempty) // 2]
    start, count = int(exact.ray_starts[victim]), int(counts[victim])
    capacity = start + count - 1  # the victim misses by one slot
    samples = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, capacity=capacity)

    kept = torch.arange(13) < victim
    expected_valid = kept | (counts == 0)
    assert samples.ray_valid.tolist() == expected_valid.tolist()
    assert samples.ray_counts.tolist() == torch.where(kept, counts, 0).tolist()
    assert int(samples.n_samples) == start
    assert (samples.ray_starts[~kept] == start).all()
    # The kept prefix is identical to the exact march; everything after it is padding.
    for name in ("positions", "t", "dt", "ray_ids"):
        assert torch.equal(getattr(samples, name)[:start], getattr(exact, name)[:start]), name
    assert (samples.dt[start:] == 0).all() and (samples.ray_ids[start:] == 13).all()


def test_capacity_smaller_than_first_ray_and_zero():
    origins, directions = _rays(7, seed=1)
    occupancy = torch.ones(RES, RES, RES, dtype=torch.bool)
    exact = march_rays(origins, directions, occupancy, STEP, MAX_STEPS)
    assert int(exact.ray_counts[0]) > 1  # the first ray crosses a full cube
    for capacity in (0, 1):
        samples = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, capacity=capacity)
        assert samples.capacity == capacity
        assert int(samples.n_samples) == 0 and (samples.ray_counts == 0).all()
        assert samples.ray_valid.tolist() == (exact.ray_counts == 0).tolist()
        assert (samples.ray_ids == 7).all() and (samples.dt == 0).all()


def test_no_ray_hits_the_box():
    origins = torch.tensor([[2.0, 2.0, 2.0], [-1.0, 0.5, 0.5], [0.5, 0.5, 3.0]])
    directions = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    full = torch.ones(RES, RES, RES, dtype=torch.bool)
    exact = march_rays(origins, directions, full, STEP, MAX_STEPS)
    assert exact.capacity == 0 and int(exact.n_samples) == 0
    assert exact.ray_counts.tolist() == [0, 0, 0] and exact.ray_valid.all()
    padded = march_rays(origins, directions, full, STEP, MAX_STEPS, capacity=5)
    assert (padded.ray_ids == 3).all() and (padded.dt == 0).all()


def test_axis_parallel_rays_match_loop():
    origins = torch.tensor([[0.31, 0.42, -1.0], [2.0, 0.5, 0.5], [0.5, 0.77, 0.2], [0.5, 1.5, 0.5]])
    directions = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    occupancy = _occupancy(3, fill=0.7)
    samples = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, capacity=200)
    expected = _loop_march(origins, directions, occupancy, torch.full((4,), 0.5))
    assert samples.ray_counts.tolist() == [len(kept) for kept in expected]
    assert samples.ray_counts[1] == 0 and samples.ray_counts[3] == 0  # outside a slab
    assert samples.ray_counts[0] > 0 and samples.ray_counts[2] > 0
    assert torch.isfinite(samples.positions).all() and torch.isfinite(samples.t).all()


def test_zero_rays():
    empty = torch.zeros(0, 3)
    samples = march_rays(empty, empty, _occupancy(0), STEP, MAX_STEPS, capacity=4)
    assert samples.n_rays == 0 and samples.ray_starts.shape == (0,)
    assert (samples.ray_ids == 0).all()


def test_chunked_marching_matches(monkeypatch):
    origins, directions = _rays(13, seed=6)
    occupancy = _occupancy(6)
    whole = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, capacity=600)
    monkeypatch.setattr("nerfmine.ops.march._CANDIDATES_PER_CHUNK", 3 * MAX_STEPS)  # 3 rays
    chunked = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, capacity=600)
    for name in ("positions", "t", "dt", "ray_ids", "ray_starts", "ray_counts", "ray_valid"):
        assert torch.equal(getattr(whole, name), getattr(chunked, name)), name
    assert torch.equal(whole.n_samples, chunked.n_samples)


def test_chunked_overflow_spans_chunks(monkeypatch):
    origins, directions = _rays(13, seed=6)
    occupancy = _occupancy(6)
    monkeypatch.setattr("nerfmine.ops.march._CANDIDATES_PER_CHUNK", 2 * MAX_STEPS)
    exact = march_rays(origins, directions, occupancy, STEP, MAX_STEPS)
    capacity = int(exact.ray_starts[9])  # rays 0..8 fit, ray 9 onwards (if non-empty) do not
    samples = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, capacity=capacity)
    assert int(samples.n_samples) == capacity
    assert torch.equal(samples.t, exact.t[:capacity])
    nonempty = exact.ray_counts > 0
    after = torch.arange(13) >= 9
    assert (samples.ray_valid == ~(after & nonempty)).all()


def test_no_host_sync_with_capacity():
    origins, directions = _rays(7, seed=7)
    occupancy = _occupancy(7)
    jitter = torch.rand(7, generator=torch.Generator().manual_seed(1))
    with _no_host_sync():
        samples = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, 300, jitter)
    assert int(samples.n_samples) > 0
    with pytest.raises(AssertionError, match="host synchronisation"), _no_host_sync():
        march_rays(origins, directions, occupancy, STEP, MAX_STEPS)  # capacity=None reads back


def test_unknown_backend():
    origins, directions = _rays(1, seed=0)
    with pytest.raises(ValueError, match="backend"):
        march_rays(origins, directions, _occupancy(0), backend="cuda")


@pytest.mark.parametrize("n_active", [0, 1, 17, 40])
def test_n_active_marches_only_the_leading_rays(n_active):
    """Slots >= n_active get no samples and are invalid; the leading rays are marched as a
    call with exactly those rays marches them (same samples, same starts)."""
    origins, directions = _rays(40, seed=5)
    occupancy = _occupancy(6)
    jitter = torch.rand(40, generator=torch.Generator().manual_seed(7))
    out = march_rays(origins, directions, occupancy, STEP, MAX_STEPS, capacity=4000,
                     jitter=jitter, n_active=torch.tensor(n_active))
    ref = march_rays(origins[:n_active], directions[:n_active], occupancy, STEP, MAX_STEPS,
                     capacity=4000, jitter=jitter[:n_active])
    assert out.n_rays == 40
    assert int(out.n_samples) == int(ref.n_samples)
    assert torch.equal(out.ray_counts[:n_active], ref.ray_counts)
    assert torch.equal(out.ray_starts[:n_active], ref.ray_starts)
    assert torch.equal(out.ray_valid[:n_active], ref.ray_valid)
    assert not out.ray_valid[n_active:].any()
    assert (out.ray_counts[n_active:] == 0).all()
    n = int(ref.n_samples)
    assert torch.equal(out.positions[:n], ref.positions[:n])
    assert torch.equal(out.ray_ids[:n], ref.ray_ids[:n])
    assert (out.dt[n:] == 0).all()
