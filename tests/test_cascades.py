"""Occupancy cascades and exponential stepping (issue 5): the reference marcher and grid.

The Triton twin is compared in tests/triton/test_march_triton.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nerfmine.occupancy import OccupancyConfig, OccupancyGrid
from nerfmine.ops.cone_lattice import lattice_params, lattice_t
from nerfmine.ops.march import march_rays
from nerfmine.ops.scene_box import (
    aabb_bounds,
    cascade_cells,
    cascades_for_aabb_scale,
    default_max_step_size,
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
    # The grid's logic is reproduced exactly: the occupied and visible cells bit for bit. Its
    # densities come from torch.exp in the test's density function, whose vectorised CPU code
    # rounds differently on different processors (1 ulp seen between two x86 machines), so
    # they are compared to float32 rounding.
    state = grid.state_dict()
    for key in ("bitfield", "visible"):
        assert torch.equal(state[key], old["grid"][key]), key
    torch.testing.assert_close(state["density"], old["grid"]["density"], rtol=4e-7, atol=0)
    assert set(state) == set(old["grid"])


def test_cascade_count_box_and_max_step_follow_instant_ngp():
    assert [cascades_for_aabb_scale(s) for s in (0.5, 1, 2, 3, 4, 5, 16, 128, 1000)] == [
        1, 1, 2, 3, 3, 4, 5, 8, 8]
    assert aabb_bounds(1) == (0.0, 1.0) and aabb_bounds(4) == (-1.5, 2.5)
    assert aabb_bounds(1000) == (0.5 - 64, 0.5 + 64)  # capped at 128
    assert default_max_step_size(128) == pytest.approx(math.sqrt(3))


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_a_point_in_cascade_k_looks_up_cascade_k(k):
    """max|p - 0.5| in [2^(k-2), 2^(k-1)) -> cascade k, cell floor(((p - .5) / 2^k + .5) res)."""
    res, n_cascades = 16, 4
    g = torch.Generator().manual_seed(k)
    lo, hi = (0.0 if k == 0 else 2.0 ** (k - 2)), 2.0 ** (k - 1)
    radius = lo + (hi - lo) * torch.rand(200, generator=g) * 0.999  # [N]
    p = (torch.rand(200, 3, generator=g) * 2 - 1) * radius[:, None]  # inside the shell's cube
    axis = torch.randint(0, 3, (200,), generator=g)
    p[torch.arange(200), axis] = radius * torch.where(torch.rand(200, generator=g) < 0.5, -1, 1)
    p = p + 0.5
    small_dt = torch.full((200,), 1e-3)
    linear = cascade_cells(p[:, 0], p[:, 1], p[:, 2], small_dt, n_cascades, res)
    assert (linear // res**3 == k).all()
    cell = (((p - 0.5) / 2**k + 0.5) * res).floor().long().clamp(0, res - 1)
    assert torch.equal(linear % res**3, (cell[:, 0] * res + cell[:, 1]) * res + cell[:, 2])
    # A long step looks up a coarser cascade (instant-ngp's mip_from_dt): dt * 2 res >= 2^(j-1).
    long_dt = torch.full((200,), 2.0 ** (k + 1) / (2 * res))
    coarse = cascade_cells(p[:, 0], p[:, 1], p[:, 2], long_dt, n_cascades, res) // res**3
    assert (coarse == min(k + 2, n_cascades - 1)).all()


def _instant_ngp_loop(o, d, t_near, t_far, u, occ, res, step, cone, max_step, max_steps):
    """instant-ngp's training march (advance_to_next_voxel with regular stepping), one ray,
    literally, in float32 scalars: [(t, dt)] of its samples."""
    f = torch.float32

    def calc_dt(t):
        return torch.clamp(t * torch.tensor(cone, dtype=f), _f32(step), _f32(max_step))

    inv = torch.where(d == 0, torch.tensor(1.0), 1.0 / torch.where(d == 0, 1.0, d))
    t = t_near + u * calc_dt(t_near)
    out = []
    while bool(t < t_far) and len(out) < max_steps:
        dt = calc_dt(t)
        pos = o + t * d
        linear = cascade_cells(pos[0:1], pos[1:2], pos[2:3], dt.reshape(1), occ.shape[0], res)
        if bool(occ.reshape(-1)[linear]):
            out.append((float(t), float(dt)))
            t = t + dt
            continue
        mip = int(linear) // res**3
        cell = res * 2.0**-mip
        dist = []
        for a in range(3):
            if float(d[a]) == 0:
                continue
            q = cell * (pos[a] - 0.5)
            dist.append((torch.floor(q + 0.5 + 0.5 * torch.sign(d[a])) - q) * inv[a])
        target = t + torch.clamp(min(dist) * torch.tensor(2.0**mip / res, dtype=f), min=0.0)
        while True:  # do { t += calc_dt(t) } while (t < t_target)
            t = t + calc_dt(t)
            if not bool(t < target):
                break
    return out


def _f32(v):
    return float(torch.tensor(v, dtype=torch.float32))


def _large_scene_rays(n, seed, aabb_scale):
    g = torch.Generator().manual_seed(seed)
    lo, hi = aabb_bounds(aabb_scale)
    origins = 0.5 + (hi - 0.5) * 1.3 * torch.nn.functional.normalize(
        torch.randn(n, 3, generator=g), dim=-1)
    origins[::3] = lo + (hi - lo) * torch.rand(len(origins[::3]), 3, generator=g)
    targets = 0.5 + (torch.rand(n, 3, generator=g) - 0.5) * (hi - lo) * 0.6
    directions = torch.nn.functional.normalize(targets - origins, dim=-1)
    directions[0] = torch.tensor([0.0, 0.0, 1.0])
    origins[0] = torch.tensor([0.3, 0.6, lo - 0.5])
    return origins, directions, torch.rand(n, generator=g)


def _blobby_cascades(n_cascades, res, seed):
    """Occupied blocks of cells (so that empty stretches are long enough to skip)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n_cascades, res // 4, res // 4, res // 4, generator=g) < 0.25
    return coarse.repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)


def _lattice_march_one_ray(o, d, t_near, t_far, u, occ, res, step, cone, max_step, max_steps):
    """What the exponential march must give for one ray, written out candidate by candidate:
    the lattice's candidates in order, kept where their cell is occupied, until t_far or
    max_steps samples: [(t, dt)]."""
    lat = lattice_params(t_near.reshape(1), u.reshape(1), step, cone, max_step)
    out, k = [], 0
    while len(out) < max_steps:
        t = lattice_t(torch.tensor([[k]]), lat, step, cone, max_step).reshape(1)
        if not bool(t < t_far):
            break
        dt = (t * _f32(cone)).clamp(min=_f32(step), max=_f32(max_step))
        pos = o + t * d
        linear = cascade_cells(pos[0:1], pos[1:2], pos[2:3], dt, occ.shape[0], res)
        if bool(occ.reshape(-1)[linear]):
            out.append((float(t), float(dt)))
        k += 1
    return out


@pytest.mark.parametrize("cone", [1 / 256, 0.05])
def test_exponential_march_keeps_the_occupied_candidates_of_the_lattice(cone):
    """Samples (t and dt) equal a per-ray, candidate-by-candidate transcription; every dt is
    clamp(t * cone_angle, step, max step); and instant-ngp's own loop (which jumps over the
    candidates behind an empty cell's exit) keeps a subset of them, up to fp32 rounding."""
    aabb_scale, res, step, max_step, max_steps = 4.0, 16, math.sqrt(3) / 512, 0.03, 300
    n_cascades = cascades_for_aabb_scale(aabb_scale)
    occ = _blobby_cascades(n_cascades, res, seed=3)
    origins, directions, jitter = _large_scene_rays(9, seed=4, aabb_scale=aabb_scale)
    s = march_rays(origins, directions, occ, step_size=step, max_steps=max_steps,
                   capacity=None, jitter=jitter, aabb_scale=aabb_scale, cone_angle=cone,
                   max_step_size=max_step)
    from nerfmine.ops.rays import ray_aabb

    t_near, t_far = ray_aabb(origins, directions, *aabb_bounds(aabb_scale))
    hit = t_far > t_near
    total, ingp_found, ingp_total = 0, 0, 0
    for r in range(9):
        tn, tf = (t_near[r], t_far[r]) if hit[r] else (torch.tensor(0.0), torch.tensor(0.0))
        want = _lattice_march_one_ray(origins[r], directions[r], tn, tf, jitter[r], occ, res,
                                      step, cone, max_step, max_steps)
        a, c = int(s.ray_starts[r]), int(s.ray_counts[r])
        got = list(zip(s.t[a:a + c].tolist(), s.dt[a:a + c].tolist()))
        assert got == want, r
        total += c
        ingp = _instant_ngp_loop(origins[r], directions[r], tn, tf, jitter[r], occ, res, step,
                                 cone, max_step, max_steps)
        if c < max_steps:  # (a capped ray stops earlier than instant-ngp's skipping one)
            ours = torch.tensor([t for t, _ in got], dtype=torch.float64)
            for t, _dt in ingp:
                ingp_total += 1
                ingp_found += bool(len(ours) and (ours - t).abs().min() <= 2e-5 * max(t, 1))
    assert total > 50 and ingp_total > 20  # the test must exercise something
    assert ingp_found >= 0.98 * ingp_total, (ingp_found, ingp_total)
    n = int(s.n_samples)
    expected_dt = (s.t[:n] * _f32(cone)).clamp(min=_f32(step), max=_f32(max_step))
    assert torch.equal(s.dt[:n], expected_dt)
    assert (s.dt[:n] > _f32(step)).any()  # steps did grow


@pytest.mark.parametrize(("t_near", "cone", "max_step"), [
    (0.0, 1 / 256, math.sqrt(3)), (0.3, 1 / 256, math.sqrt(3)), (3.0, 1 / 256, 0.02),
    (40.0, 1 / 64, math.sqrt(3)), (700.0, 1 / 256, math.sqrt(3)), (0.01, 0.05, 0.03)])
def test_the_lattice_is_instant_ngps_walk_up_to_rounding(t_near, cone, max_step):
    """Candidate k of the closed form and step k of t += clamp(t c, a, b) (in float64) agree to
    a relative 1e-5 over 3000 steps, through all three regimes."""
    step = math.sqrt(3) / 1024
    u = torch.tensor([0.0, 0.37, 0.99])
    lat = lattice_params(torch.full((3,), t_near), u, step, cone, max_step)
    k = torch.arange(3000)[None].expand(3, -1)
    t = lattice_t(k, lat, step, cone, max_step).double()  # [3, 3000]
    a, b, c = _f32(step), _f32(max_step), _f32(cone)
    for r in range(3):
        walk, tt = [], float(lat.t0[r])
        for _ in range(3000):
            walk.append(tt)
            tt += min(max(tt * c, a), b)
        walk = torch.tensor(walk, dtype=torch.float64)
        torch.testing.assert_close(t[r], walk, rtol=1e-5, atol=1e-9)
        assert (t[r, 1:] > t[r, :-1]).all()  # strictly increasing
    assert t.max() > 0


def test_dt_grows_with_distance_on_a_full_grid():
    """Full occupancy: consecutive samples are t_{i+1} = t_i + dt_i (to fp32 rounding of the
    closed form), with dt_i = clamp(t_i / 256, sqrt(3)/1024, max), all inside the box."""
    occ = torch.ones(3, 16, 16, 16, dtype=torch.bool)
    origins, directions, jitter = _large_scene_rays(6, seed=9, aabb_scale=4.0)
    s = march_rays(origins, directions, occ, max_steps=4096, capacity=None, jitter=jitter,
                   aabb_scale=4.0, cone_angle=1 / 256)
    step = _f32(math.sqrt(3) / 1024)
    for r in range(6):
        a, c = int(s.ray_starts[r]), int(s.ray_counts[r])
        t, dt = s.t[a:a + c], s.dt[a:a + c]
        assert torch.equal(dt, (t * (1 / 256)).clamp(min=step, max=_f32(math.sqrt(3) * 8)))
        torch.testing.assert_close(t[1:], t[:-1] + dt[:-1], rtol=1e-5, atol=0)
    n = int(s.n_samples)
    assert ((s.positions[:n] >= -1.5) & (s.positions[:n] <= 2.5)).all()
    assert (s.dt[:n] > 2 * step).any()


def test_occupancy_cascades_mark_a_density_blob_in_the_right_cells():
    """A blob outside the unit cube lands in cascade 2's cell only; a blob inside lands in
    cascade 0 and, through the max-pool, in the cells of cascades 1 and 2 covering it."""
    res = 16
    grid = OccupancyGrid(OccupancyConfig(resolution=res), aabb_scale=4.0)
    assert grid.n_cascades == 3 and grid.bitfield.shape == (3, res, res, res)
    outer = torch.tensor([1.9, 0.5, -0.7])  # max|p - .5| = 1.4: cascade 2
    inner = torch.tensor([0.30, 0.62, 0.55])  # cascade 0

    def blob(p):
        near_outer = ((p - outer).abs() < 0.26).all(-1)  # contains its cascade-2 cell
        near_inner = ((p - inner).abs() < 0.07).all(-1)  # contains its cascade-0 cell
        return torch.where(near_outer | near_inner, 1000.0, 0.0)

    gen = torch.Generator().manual_seed(0)
    grid.update(0, blob, gen)  # warm-up: every cell of every cascade evaluated once

    def cell(p, k):
        q = ((p - 0.5) / 2**k + 0.5) * res
        return tuple(int(v) for v in q.floor())

    bits = grid.bitfield
    assert bits[2][cell(outer, 2)]
    occupied2 = torch.nonzero(bits[2])
    centres2 = ((occupied2.float() + 0.5) / res - 0.5) * 4 + 0.5
    far_from_both = ((centres2 - outer).abs().amax(-1) > 0.4) & (
        (centres2 - inner).abs().amax(-1) > 0.4)
    assert not far_from_both.any()
    assert bits[0].sum() >= 1 and bits[0][cell(inner, 0)]
    assert bits[1][cell(inner, 1)] and bits[2][cell(inner, 2)]  # pooled into coarser cascades
    assert not bits[0][cell(torch.tensor([0.9, 0.1, 0.1]), 0)]
    # cell positions the update sampled cover every cascade's extent
    rec = []
    grid.update(16, lambda p: rec.append(p) or torch.zeros(p.shape[0]), gen)
    pts = torch.cat(rec)
    assert pts.shape[0] == 3 * res**3 and pts.min() < -1.4 and pts.max() > 2.4


def test_set_visible_empties_cells_outside_the_box():
    """aabb_scale 3: cascade 2 spans [-1.5, 2.5] but the box is [-1, 2]; outer cells stay empty."""
    res = 16
    grid = OccupancyGrid(OccupancyConfig(resolution=res), aabb_scale=3.0)
    grid.set_visible(torch.ones(grid.n_cells, dtype=torch.bool))
    centres = grid.cell_centers()
    inside = ((centres - 0.5).abs() < 1.5 + 0.125).all(-1)  # cell overlaps [-1, 2]
    assert torch.equal(grid.visible, inside)
    assert grid.cell_centers()[: res**3].min() == 0.5 / res  # cascade 0 is the unit cube


def test_exponential_walk_misses_inactive_rays_and_capacity():
    """Rays that miss the box or are past n_active get nothing; overflowing rays are dropped
    whole, the kept ones forming a prefix, as with constant steps."""
    occ = torch.ones(2, 8, 8, 8, dtype=torch.bool)
    origins = torch.tensor([[5.0, 5.0, 5.0], [0.5, 0.5, -3.0], [0.4, 0.5, -3.0], [0.5, 0.6, -3.]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0., 0., 1.]])
    kw = dict(step_size=0.05, max_steps=100, aabb_scale=2.0, cone_angle=0.1)
    full = march_rays(origins, directions, occ, capacity=None, **kw)
    assert full.ray_counts[0] == 0 and (full.ray_counts[1:] > 0).all()
    part = march_rays(origins, directions, occ, capacity=None, n_active=torch.tensor(2), **kw)
    assert part.ray_counts.tolist() == [0, int(full.ray_counts[1]), 0, 0]
    assert part.ray_valid.tolist() == [True, True, False, False]
    cap = int(full.ray_counts[1]) + 1
    small = march_rays(origins, directions, occ, capacity=cap, **kw)
    assert small.ray_valid.tolist() == [True, True, False, False]
    assert int(small.n_samples) == int(full.ray_counts[1])
    n = int(small.n_samples)
    assert torch.equal(small.t[:n], full.t[:n]) and small.dt[n:].eq(0).all()


def test_segmented_walk_continues_one_long_walk():
    """k_start = ray_next resumes the march exactly: the segments' samples are those of one
    march (what the renderer relies on)."""
    occ = _blobby_cascades(3, 16, seed=1)
    origins, directions, _ = _large_scene_rays(7, seed=2, aabb_scale=4.0)
    kw = dict(step_size=math.sqrt(3) / 256, capacity=None, aabb_scale=4.0, cone_angle=1 / 64)
    whole = march_rays(origins, directions, occ, max_steps=90, **kw)
    first = march_rays(origins, directions, occ, max_steps=30, **kw)
    rest = march_rays(origins, directions, occ, max_steps=60, k_start=first.ray_next, **kw)
    for r in range(7):
        a = whole.t[whole.ray_starts[r]:whole.ray_starts[r] + whole.ray_counts[r]]
        b = first.t[first.ray_starts[r]:first.ray_starts[r] + first.ray_counts[r]]
        if int(first.ray_counts[r]) == 30:
            c = rest.t[rest.ray_starts[r]:rest.ray_starts[r] + rest.ray_counts[r]]
            b = torch.cat([b, c])
        assert torch.equal(a, b), r
    assert int(whole.n_samples) > int(first.n_samples)


def test_render_with_exponential_steps_matches_one_march():
    """The segmented renderer equals compositing one whole march (no early termination hit)."""
    from nerfmine.ops.composite import composite
    from nerfmine.render import RenderSettings, render_rays

    occ = _blobby_cascades(3, 16, seed=5)
    origins, directions, _ = _large_scene_rays(11, seed=6, aabb_scale=4.0)

    class Faint(torch.nn.Module):
        def forward(self, p, d):
            s = torch.full((p.shape[0], 1), -3.0) + 0.3 * p[:, :1]  # thin: T stays high
            return torch.cat([s, p.sin()], dim=-1)

    settings = RenderSettings(step_size=math.sqrt(3) / 256, max_steps=200, min_transmittance=0,
                              rays_per_chunk=5, aabb_scale=4.0, cone_angle=1 / 128)
    bg = torch.rand(11, 3, generator=torch.Generator().manual_seed(0))
    rgb, opacity, depth = render_rays(Faint(), occ, origins, directions, bg, settings)
    s = march_rays(origins, directions, occ, step_size=settings.step_size, max_steps=200,
                   capacity=None, aabb_scale=4.0, cone_angle=1 / 128)
    want_rgb, want_opacity, want_depth = composite(Faint()(s.positions, s.directions), s, bg,
                                                   min_transmittance=0)
    assert torch.allclose(rgb, want_rgb, atol=1e-5) and torch.allclose(depth, want_depth,
                                                                      atol=1e-4)
    assert torch.allclose(opacity, want_opacity, atol=1e-5) and (opacity > 0.01).any()


def test_export_helpers_read_cascaded_bitfields():
    """occupied_bbox and sample_occupied_points place coarse-cascade cells in unit-cube
    coordinates; K = 1 bitfields keep their old behaviour (tests/test_export.py)."""
    from nerfmine.export import occupied_bbox, sample_occupied_points
    from nerfmine.occupancy import occupied_cell_boxes

    res = 8
    bits = torch.zeros(2, res, res, res, dtype=torch.bool)
    bits[0, 3, 4, 5] = True  # unit-cube cell [3/8, 4/8) x [4/8, 5/8) x [5/8, 6/8)
    bits[1, 3, 4, 5] = True  # covered by cascade 0: left out of the boxes
    bits[1, 7, 0, 2] = True  # cascade 1: [1.25, 1.5) x [-0.5, -0.25) x [0, 0.25)
    lo, size = occupied_cell_boxes(bits)
    assert lo.tolist() == [[0.375, 0.5, 0.625], [1.25, -0.5, 0.0]] and size.tolist() == [
        0.125, 0.25]
    b_lo, b_hi = occupied_bbox(bits, pad_cells=0)
    assert b_lo.tolist() == [0.375, -0.5, 0.0] and b_hi.tolist() == [1.5, 0.625, 0.75]
    pts = sample_occupied_points(bits, 400, torch.Generator().manual_seed(0))
    in_fine = ((pts >= lo[0]) & (pts < lo[0] + 0.125)).all(-1)
    in_coarse = ((pts >= lo[1]) & (pts < lo[1] + 0.25)).all(-1)
    assert (in_fine | in_coarse).all() and in_fine.any() and in_coarse.any()
