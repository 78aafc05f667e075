"""Triton ray marching into packed sample buffers (the ``backend="triton"`` of
:func:`nerfmine.ops.march.march_rays`).

Two passes over the same candidate walk, one program per ray:

1. ``_march_count_kernel`` counts the kept candidates of each ray.
2. ``torch.cumsum`` gives the (unclamped) starts; a ray fits when ``start + count <=
   capacity`` (a prefix of the rays); a ray that does not fit is dropped (count 0, start
   ``n_samples``) and invalid unless it is empty, as in the reference; all on device.
3. ``_march_write_kernel`` walks again and writes the kept candidates of fitting rays at
   ``start + rank``; ``_pad_kernel`` fills slots ``>= n_samples`` with the padding values, reading
   ``n_samples`` on device.

The arithmetic reproduces the reference expression by expression in fp32
(``t = t_near + (k + u) * step_size``, ``p = o + t d``, ``cell = clamp(floor(p * res))``) and the
kernels are compiled with ``enable_fp_fusion=False`` so that no multiply-add is contracted into an
FMA: kept candidates, ``t`` and positions come out bit-identical to the reference. A ray's walk
stops at the first chunk with ``t >= t_far`` (t grows with k).

Cascades (K > 1): ``_cell_index`` picks the cascade with comparisons against powers of two and
scales by exact powers of two, as the reference's ``_cascade_cells``. Exponential stepping
(``cone_angle > 0``): the candidates of a ray form a recurrence ``t += clamp(t * c, lo, hi)``, so
``_exponential_walk_kernel`` runs one lane per ray (EXP_BLOCK rays per program), stepping all
lanes together, once to count and once to write; the empty-cell skip uses the reciprocal
directions computed by torch (a kernel division could differ from the reference's).

No host synchronisation when ``capacity`` is given; ``capacity=None`` reads the total once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nerfmine.ops.packed import PackedSamples, pack_rays, packed_samples, ray_slots_active
from nerfmine.ops.scene_box import (
    NO_BOUNDARY,
    default_max_step_size,
    flat_occupancy,
    ray_box,
    walk_start,
)

# Candidates examined at once by one program. 128 candidates x 3 coordinates fit in registers of
# two warps; a ray through the unit cube has up to sqrt(3) / step_size (1024) candidates.
DEFAULT_BLOCK = 128
DEFAULT_NUM_WARPS = 4
_PAD_BLOCK = 1024
# Rays per program of the exponential walk, one warp each: a training step of a large scene has
# few rays (~1.7k on the fox), each walking thousands of steps, so small programs spread them
# over every SM and a block waits only for its own longest ray.
EXP_BLOCK = 16
EXP_NUM_WARPS = 1
# Distance along an axis the ray does not move on (the reference uses the same value).
_NO_BOUNDARY = tl.constexpr(NO_BOUNDARY)  # a global read inside kernels must be a constexpr


@triton.jit
def _cell_index(px, py, pz, dtr, RES: tl.constexpr, N_CASCADES: tl.constexpr):
    """Linear occupancy index, 2^-mip and 2^mip of positions (``_cascade_cells`` of the
    reference): mip from max|p - 0.5| and from ``dtr`` = dt * 2 * res, comparisons only."""
    fres = RES * 1.0
    one = px * 0.0 + 1.0
    if N_CASCADES == 1:
        qx = px
        qy = py
        qz = pz
        base = tl.zeros(px.shape, dtype=tl.int32)
        scale = one
        up = one
    else:
        x = tl.maximum(tl.maximum(tl.abs(px - 0.5), tl.abs(py - 0.5)), tl.abs(pz - 0.5))
        mip = tl.zeros(px.shape, dtype=tl.int32)
        mip_dt = tl.zeros(px.shape, dtype=tl.int32)
        thr_pos = 0.5
        thr_dt = 1.0
        for _j in tl.static_range(1, N_CASCADES):
            mip += (x >= thr_pos).to(tl.int32)
            mip_dt += (dtr >= thr_dt).to(tl.int32)
            thr_pos = thr_pos * 2.0
            thr_dt = thr_dt * 2.0
        mip = tl.maximum(mip, mip_dt)
        scale = one
        up = one
        for j in tl.static_range(1, N_CASCADES):
            scale = tl.where(mip >= j, scale * 0.5, scale)
            up = tl.where(mip >= j, up * 2.0, up)
        qx = tl.where(mip > 0, (px - 0.5) * scale + 0.5, px)
        qy = tl.where(mip > 0, (py - 0.5) * scale + 0.5, py)
        qz = tl.where(mip > 0, (pz - 0.5) * scale + 0.5, pz)
        base = mip * (RES * RES * RES)
    # floor, then clamp to the grid (done in float so out-of-range values never overflow an int).
    cx = tl.minimum(tl.maximum(tl.floor(qx * fres), 0.0), fres - 1.0).to(tl.int32)
    cy = tl.minimum(tl.maximum(tl.floor(qy * fres), 0.0), fres - 1.0).to(tl.int32)
    cz = tl.minimum(tl.maximum(tl.floor(qz * fres), 0.0), fres - 1.0).to(tl.int32)
    return base + (cx * RES + cy) * RES + cz, scale, up


@triton.jit
def _candidates(
    ox, oy, oz, dx, dy, dz, t_near, t_far, u, occ_ptr, k, max_steps, step_size,
    RES: tl.constexpr, N_CASCADES: tl.constexpr, BLOCK: tl.constexpr,
):
    """Candidates k .. k + BLOCK of one ray: (keep, t, px, py, pz)."""
    steps = (k + tl.arange(0, BLOCK)).to(tl.float32)
    t = t_near + (steps + u) * step_size
    px = ox + t * dx
    py = oy + t * dy
    pz = oz + t * dz
    linear, _scale, _up = _cell_index(px, py, pz, step_size * (RES * 2.0), RES, N_CASCADES)
    inside = (t < t_far) & (k + tl.arange(0, BLOCK) < max_steps)
    occupied = tl.load(occ_ptr + linear, mask=inside, other=0) != 0
    return inside & occupied, t, px, py, pz


@triton.jit
def _load_ray(origins_ptr, directions_ptr, t_near_ptr, t_far_ptr, jitter_ptr, ray):
    ox = tl.load(origins_ptr + ray * 3)
    oy = tl.load(origins_ptr + ray * 3 + 1)
    oz = tl.load(origins_ptr + ray * 3 + 2)
    dx = tl.load(directions_ptr + ray * 3)
    dy = tl.load(directions_ptr + ray * 3 + 1)
    dz = tl.load(directions_ptr + ray * 3 + 2)
    t_near = tl.load(t_near_ptr + ray)
    t_far = tl.load(t_far_ptr + ray)
    u = tl.load(jitter_ptr + ray)
    return ox, oy, oz, dx, dy, dz, t_near, t_far, u


@triton.jit
def _march_count_kernel(
    origins_ptr, directions_ptr, t_near_ptr, t_far_ptr, jitter_ptr, occ_ptr, counts_ptr,
    max_steps, step_size,
    RES: tl.constexpr, N_CASCADES: tl.constexpr, BLOCK: tl.constexpr,
):
    ray = tl.program_id(0).to(tl.int64)
    ox, oy, oz, dx, dy, dz, t_near, t_far, u = _load_ray(
        origins_ptr, directions_ptr, t_near_ptr, t_far_ptr, jitter_ptr, ray
    )
    count = 0
    k = 0
    # The first candidate of a chunk has the chunk's smallest t: stop once it is past t_far.
    while (k < max_steps) & (t_near + (k * 1.0 + u) * step_size < t_far):
        keep, _t, _px, _py, _pz = _candidates(
            ox, oy, oz, dx, dy, dz, t_near, t_far, u, occ_ptr, k, max_steps, step_size,
            RES, N_CASCADES, BLOCK,
        )
        count += tl.sum(keep.to(tl.int32), axis=0)
        k += BLOCK
    tl.store(counts_ptr + ray, count.to(tl.int64))


@triton.jit
def _march_write_kernel(
    origins_ptr, directions_ptr, t_near_ptr, t_far_ptr, jitter_ptr, occ_ptr,
    ray_starts_ptr, ray_fits_ptr,
    positions_ptr, sample_dirs_ptr, ts_ptr, dts_ptr, ray_ids_ptr,
    max_steps, step_size,
    RES: tl.constexpr, N_CASCADES: tl.constexpr, BLOCK: tl.constexpr,
):
    ray = tl.program_id(0).to(tl.int64)
    if tl.load(ray_fits_ptr + ray) != 0:
        ox, oy, oz, dx, dy, dz, t_near, t_far, u = _load_ray(
            origins_ptr, directions_ptr, t_near_ptr, t_far_ptr, jitter_ptr, ray
        )
        slot = tl.load(ray_starts_ptr + ray)  # where the chunk's first kept candidate goes
        k = 0
        while (k < max_steps) & (t_near + (k * 1.0 + u) * step_size < t_far):
            keep, t, px, py, pz = _candidates(
                ox, oy, oz, dx, dy, dz, t_near, t_far, u, occ_ptr, k, max_steps, step_size,
                RES, N_CASCADES, BLOCK,
            )
            keep_i = keep.to(tl.int32)
            dest = slot + tl.cumsum(keep_i, axis=0) - keep_i  # [BLOCK], exclusive rank
            tl.store(positions_ptr + dest * 3, px, mask=keep)
            tl.store(positions_ptr + dest * 3 + 1, py, mask=keep)
            tl.store(positions_ptr + dest * 3 + 2, pz, mask=keep)
            tl.store(sample_dirs_ptr + dest * 3, tl.zeros_like(px) + dx, mask=keep)
            tl.store(sample_dirs_ptr + dest * 3 + 1, tl.zeros_like(px) + dy, mask=keep)
            tl.store(sample_dirs_ptr + dest * 3 + 2, tl.zeros_like(px) + dz, mask=keep)
            tl.store(ts_ptr + dest, t, mask=keep)
            tl.store(dts_ptr + dest, tl.zeros_like(t) + step_size, mask=keep)
            tl.store(ray_ids_ptr + dest, tl.zeros_like(dest) + ray, mask=keep)
            slot += tl.sum(keep_i, axis=0)
            k += BLOCK


@triton.jit
def _step(t, cone_angle, min_step, max_step):
    """instant-ngp's calc_dt: clamp(t * cone_angle, min_step, max_step)."""
    return tl.minimum(tl.maximum(t * cone_angle, min_step), max_step)


@triton.jit
def _axis_distance(p, d, inv, cell):
    """Ray distance to the next cell boundary along one axis (``_distance_to_next_voxel``)."""
    q = cell * (p - 0.5)
    half = tl.where(d > 0, 0.5, tl.where(d < 0, -0.5, 0.0))
    axis = (tl.floor(q + 0.5 + half) - q) * inv
    return tl.where(d == 0, _NO_BOUNDARY, axis)


@triton.jit
def _exponential_walk_kernel(
    origins_ptr, directions_ptr, inv_dir_ptr, t_start_ptr, t_far_ptr, t_near_ptr, occ_ptr,
    counts_ptr, ray_starts_ptr, ray_fits_ptr,
    positions_ptr, sample_dirs_ptr, ts_ptr, dts_ptr, ray_ids_ptr,
    n_rays, max_steps, step_size, cone_angle, max_step, inv_res,
    RES: tl.constexpr, N_CASCADES: tl.constexpr, WRITE: tl.constexpr, BLOCK: tl.constexpr,
):
    """The cone_angle > 0 walk, one lane per ray: counts kept samples (WRITE False) or writes
    them at ray_starts + rank for rays that fit (WRITE True)."""
    rays = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = rays < n_rays
    ox = tl.load(origins_ptr + rays * 3, mask=valid, other=0.0)
    oy = tl.load(origins_ptr + rays * 3 + 1, mask=valid, other=0.0)
    oz = tl.load(origins_ptr + rays * 3 + 2, mask=valid, other=0.0)
    dx = tl.load(directions_ptr + rays * 3, mask=valid, other=0.0)
    dy = tl.load(directions_ptr + rays * 3 + 1, mask=valid, other=0.0)
    dz = tl.load(directions_ptr + rays * 3 + 2, mask=valid, other=0.0)
    ix = tl.load(inv_dir_ptr + rays * 3, mask=valid, other=1.0)
    iy = tl.load(inv_dir_ptr + rays * 3 + 1, mask=valid, other=1.0)
    iz = tl.load(inv_dir_ptr + rays * 3 + 2, mask=valid, other=1.0)
    t_near = tl.load(t_near_ptr + rays, mask=valid, other=0.0)
    t_far = tl.load(t_far_ptr + rays, mask=valid, other=0.0)
    t = tl.load(t_start_ptr + rays, mask=valid, other=0.0)  # march.walk_start, from torch
    fres = RES * 1.0
    target = t_near
    count = tl.zeros([BLOCK], dtype=tl.int32)
    alive = valid & (t < t_far) & (count < max_steps)
    if WRITE:
        alive = alive & (tl.load(ray_fits_ptr + rays, mask=valid, other=0) != 0)
        slot = tl.load(ray_starts_ptr + rays, mask=valid, other=0)
    while tl.max(alive.to(tl.int32), axis=0) > 0:
        dt = _step(t, cone_angle, step_size, max_step)
        px = ox + t * dx
        py = oy + t * dy
        pz = oz + t * dz
        linear, scale, up = _cell_index(px, py, pz, dt * (RES * 2.0), RES, N_CASCADES)
        test = alive & (t >= target)
        occupied = tl.load(occ_ptr + linear, mask=test, other=0) != 0
        keep = test & occupied
        if WRITE:
            dest = slot + count
            tl.store(positions_ptr + dest * 3, px, mask=keep)
            tl.store(positions_ptr + dest * 3 + 1, py, mask=keep)
            tl.store(positions_ptr + dest * 3 + 2, pz, mask=keep)
            tl.store(sample_dirs_ptr + dest * 3, dx, mask=keep)
            tl.store(sample_dirs_ptr + dest * 3 + 1, dy, mask=keep)
            tl.store(sample_dirs_ptr + dest * 3 + 2, dz, mask=keep)
            tl.store(ts_ptr + dest, t, mask=keep)
            tl.store(dts_ptr + dest, dt, mask=keep)
            tl.store(ray_ids_ptr + dest, rays, mask=keep)
        count += keep.to(tl.int32)
        # An empty cell: skip the candidates before its exit (instant-ngp's DDA distance).
        cell = scale * fres
        inv_cell = inv_res * up
        dist = tl.minimum(tl.minimum(_axis_distance(px, dx, ix, cell),
                                     _axis_distance(py, dy, iy, cell)),
                          _axis_distance(pz, dz, iz, cell))
        dist = tl.maximum(dist * inv_cell, 0.0)
        target = tl.where(test & (occupied == 0), t + dist, target)
        t = tl.where(alive, t + dt, t)
        alive = alive & (t < t_far) & (count < max_steps)
    if not WRITE:
        tl.store(counts_ptr + rays, count.to(tl.int64), mask=valid)


@triton.jit
def _pad_kernel(
    n_samples_ptr, positions_ptr, sample_dirs_ptr, ts_ptr, dts_ptr, ray_ids_ptr,
    capacity, n_rays,
    BLOCK: tl.constexpr,
):
    """Slots >= n_samples: positions 0.5, directions (0, 0, 1), t = dt = 0, ray_ids n_rays."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    pad = (offs >= tl.load(n_samples_ptr)) & (offs < capacity)
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    tl.store(positions_ptr + offs * 3, zero + 0.5, mask=pad)
    tl.store(positions_ptr + offs * 3 + 1, zero + 0.5, mask=pad)
    tl.store(positions_ptr + offs * 3 + 2, zero + 0.5, mask=pad)
    tl.store(sample_dirs_ptr + offs * 3, zero, mask=pad)
    tl.store(sample_dirs_ptr + offs * 3 + 1, zero, mask=pad)
    tl.store(sample_dirs_ptr + offs * 3 + 2, zero + 1.0, mask=pad)
    tl.store(ts_ptr + offs, zero, mask=pad)
    tl.store(dts_ptr + offs, zero, mask=pad)
    tl.store(ray_ids_ptr + offs, tl.zeros([BLOCK], dtype=tl.int64) + n_rays, mask=pad)


def march_rays_triton(
    origins: torch.Tensor,
    directions: torch.Tensor,
    occupancy: torch.Tensor,
    step_size: float,
    max_steps: int,
    capacity: int | None = None,
    jitter: torch.Tensor | None = None,
    block: int = DEFAULT_BLOCK,
    n_active: torch.Tensor | None = None,
    aabb_scale: float = 1.0,
    cone_angle: float = 0.0,
    max_step_size: float | None = None,
    t_start: torch.Tensor | None = None,
) -> PackedSamples:
    """Triton twin of ``march_rays(..., backend="torch")``; see that function for the contract.

    origins, directions: [R, 3]; occupancy: [res, res, res] or [K, res, res, res] bool;
    jitter: [R] in [0, 1) or None (0.5). Returns a PackedSamples identical to the reference's.
    """
    occ, n_cascades, res = flat_occupancy(occupancy)
    device = origins.device
    n_rays = origins.shape[0]
    origins = origins.float().contiguous()
    directions = directions.float().contiguous()
    if jitter is None:
        jitter = torch.full((n_rays,), 0.5, device=device)
    jitter = jitter.float().contiguous()
    t_near, t_far = ray_box(origins, directions, aabb_scale)
    t_near = t_near.float().contiguous()
    active = ray_slots_active(n_rays, n_active, device)  # [R] bool or None
    if active is not None:
        t_far = torch.where(active, t_far, t_near)  # an inactive ray has an empty segment
    t_far = t_far.float().contiguous()
    occ = occ.contiguous()
    occ = occ.view(torch.uint8) if occ.dtype == torch.bool else (occ != 0).view(torch.uint8)
    step_size = float(step_size)
    max_steps = int(max_steps)
    exponential = cone_angle > 0
    if exponential:
        max_step = default_max_step_size(res) if max_step_size is None else float(max_step_size)
        safe = torch.where(directions == 0, 1.0, directions)
        inv_dir = (1.0 / safe).contiguous()  # [R, 3], as the reference computes it
        t0 = walk_start(t_near, jitter, step_size, cone_angle, max_step, t_start).contiguous()
        walk_args = (n_rays, max_steps, step_size, float(cone_angle), max_step, 1.0 / res)
        grid = (triton.cdiv(n_rays, EXP_BLOCK),)
        walk = dict(RES=res, N_CASCADES=n_cascades, BLOCK=EXP_BLOCK,
                    num_warps=EXP_NUM_WARPS, enable_fp_fusion=False)
    # No contracted multiply-adds: the candidates must match the reference bit for bit.
    launch = dict(RES=res, N_CASCADES=n_cascades, BLOCK=block, num_warps=DEFAULT_NUM_WARPS,
                  enable_fp_fusion=False)

    counts = torch.empty(n_rays, dtype=torch.int64, device=device)  # [R]
    if n_rays > 0 and exponential:
        _exponential_walk_kernel[grid](
            origins, directions, inv_dir, t0, t_far, t_near, occ, counts, counts, counts,
            origins, origins, t_near, t_near, counts, *walk_args, WRITE=False, **walk,
        )
    elif n_rays > 0:
        _march_count_kernel[(n_rays,)](
            origins, directions, t_near, t_far, jitter, occ, counts, max_steps, step_size,
            **launch,
        )
    packing = pack_rays(counts, capacity, active)  # capacity None: the one host read
    capacity, fits, ray_starts, n_samples = (packing.capacity, packing.fits, packing.ray_starts,
                                             packing.n_samples)

    positions = torch.empty((capacity, 3), dtype=torch.float32, device=device)
    sample_dirs = torch.empty((capacity, 3), dtype=torch.float32, device=device)
    ts = torch.empty(capacity, dtype=torch.float32, device=device)
    dts = torch.empty(capacity, dtype=torch.float32, device=device)
    ray_ids = torch.empty(capacity, dtype=torch.int64, device=device)
    if n_rays > 0 and capacity > 0 and exponential:
        _exponential_walk_kernel[grid](
            origins, directions, inv_dir, t0, t_far, t_near, occ, counts, ray_starts, fits,
            positions, sample_dirs, ts, dts, ray_ids, *walk_args, WRITE=True, **walk,
        )
    elif n_rays > 0 and capacity > 0:
        _march_write_kernel[(n_rays,)](
            origins, directions, t_near, t_far, jitter, occ, ray_starts, fits,
            positions, sample_dirs, ts, dts, ray_ids, max_steps, step_size,
            **launch,
        )
    if capacity > 0:
        _pad_kernel[(triton.cdiv(capacity, _PAD_BLOCK),)](
            n_samples, positions, sample_dirs, ts, dts, ray_ids, capacity, n_rays,
            BLOCK=_PAD_BLOCK,
        )
    return packed_samples((positions, sample_dirs, ts, dts, ray_ids), packing, n_rays)
