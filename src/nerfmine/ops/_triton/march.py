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
scales by exact powers of two, as the reference's ``cascade_cells``. Exponential stepping
(``cone_angle > 0``): the candidates are the closed-form lattice of
:mod:`nerfmine.ops.cone_lattice` (per-ray parameters by :mod:`._triton.cone_lattice`), so
``_lattice_kernel`` tests them BLOCK at a time like the constant-step kernels, once to count
(and to find the candidate after each ray's last sample) and once to write.

No host synchronisation when ``capacity`` is given; ``capacity=None`` reads the total once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nerfmine.ops._triton.cone_lattice import lattice_params_triton
from nerfmine.ops.cone_lattice import power_bits
from nerfmine.ops.packed import PackedSamples, pack_rays, packed_samples, ray_slots_active
from nerfmine.ops.scene_box import default_max_step_size, flat_occupancy, fp32, ray_box

# Candidates examined at once by one program. 128 candidates x 3 coordinates fit in registers of
# two warps; a ray through the unit cube has up to sqrt(3) / step_size (1024) candidates.
DEFAULT_BLOCK = 128
DEFAULT_NUM_WARPS = 4
_PAD_BLOCK = 1024


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
def _lattice_t(k, t0, k_a, t_b, k_b, t_c, step_size, ratio, max_step, POWER_BITS: tl.constexpr):
    """Candidate k of a ray (``cone_lattice.lattice_t``): t0 + k a before k_a, t_b r^(k - k_a)
    before k_b (binary powering with the fp32 squares of r, lowest bit first), then
    t_c + (k - k_b) b."""
    j = tl.maximum(k - k_a, 0)
    power = k.to(tl.float32) * 0.0 + 1.0
    square = ratio
    for bit in tl.static_range(POWER_BITS):
        power = power * tl.where(((j >> bit) & 1) == 1, square, 1.0)
        square = square * square
    in_a = t0 + k.to(tl.float32) * step_size
    in_b = t_b * power
    in_c = t_c + (k - k_b).to(tl.float32) * max_step
    return tl.where(k < k_a, in_a, tl.where(k < k_b, in_b, in_c))


@triton.jit
def _lattice_candidates(
    ox, oy, oz, dx, dy, dz, t_far, t0, k_a, t_b, k_b, t_c, k, occ_ptr,
    step_size, cone_angle, ratio, max_step,
    RES: tl.constexpr, N_CASCADES: tl.constexpr, BLOCK: tl.constexpr,
    POWER_BITS: tl.constexpr,
):
    """Candidates k .. k + BLOCK of one ray on its lattice: (hit, t, dt, px, py, pz, kk)."""
    kk = k + tl.arange(0, BLOCK)
    t = _lattice_t(kk, t0, k_a, t_b, k_b, t_c, step_size, ratio, max_step, POWER_BITS)
    dt = _step(t, cone_angle, step_size, max_step)
    px = ox + t * dx
    py = oy + t * dy
    pz = oz + t * dz
    linear, _scale, _up = _cell_index(px, py, pz, dt * (RES * 2.0), RES, N_CASCADES)
    inside = t < t_far
    hit = inside & (tl.load(occ_ptr + linear, mask=inside, other=0) != 0)
    return hit, t, dt, px, py, pz, kk


@triton.jit
def _lattice_kernel(
    origins_ptr, directions_ptr, t_far_ptr, t0_ptr, k_a_ptr, t_b_ptr, k_b_ptr, t_c_ptr,
    k_start_ptr, occ_ptr, counts_ptr, next_ptr, ray_starts_ptr, ray_fits_ptr,
    positions_ptr, sample_dirs_ptr, ts_ptr, dts_ptr, ray_ids_ptr,
    max_steps, step_size, cone_angle, ratio, max_step,
    RES: tl.constexpr, N_CASCADES: tl.constexpr, BLOCK: tl.constexpr,
    POWER_BITS: tl.constexpr, WRITE: tl.constexpr,
):
    """One ray per program, its lattice's candidates BLOCK at a time: counts the kept samples
    and the candidate after the last kept one (WRITE False), or writes the kept samples at
    ray_starts + rank for rays that fit (WRITE True). A ray stops at max_steps samples or at
    the first chunk that starts past t_far (t grows with k)."""
    ray = tl.program_id(0).to(tl.int64)
    run = True
    if WRITE:
        run = tl.load(ray_fits_ptr + ray) != 0
    if run:
        ox = tl.load(origins_ptr + ray * 3)
        oy = tl.load(origins_ptr + ray * 3 + 1)
        oz = tl.load(origins_ptr + ray * 3 + 2)
        dx = tl.load(directions_ptr + ray * 3)
        dy = tl.load(directions_ptr + ray * 3 + 1)
        dz = tl.load(directions_ptr + ray * 3 + 2)
        t_far = tl.load(t_far_ptr + ray)
        t0 = tl.load(t0_ptr + ray)
        k_a = tl.load(k_a_ptr + ray)
        t_b = tl.load(t_b_ptr + ray)
        k_b = tl.load(k_b_ptr + ray)
        t_c = tl.load(t_c_ptr + ray)
        k = tl.load(k_start_ptr + ray)
        k_next = k
        count = k * 0  # int64, like every loop-carried count
        slot = count
        if WRITE:
            slot = tl.load(ray_starts_ptr + ray)
        t_first = _lattice_t(k, t0, k_a, t_b, k_b, t_c, step_size, ratio, max_step, POWER_BITS)
        while (count < max_steps) & (t_first < t_far):
            hit, t, dt, px, py, pz, kk = _lattice_candidates(
                ox, oy, oz, dx, dy, dz, t_far, t0, k_a, t_b, k_b, t_c, k, occ_ptr,
                step_size, cone_angle, ratio, max_step, RES, N_CASCADES, BLOCK, POWER_BITS)
            hit_i = hit.to(tl.int64)
            rank = count + tl.cumsum(hit_i, axis=0) - hit_i  # [BLOCK]
            keep = hit & (rank < max_steps)
            if WRITE:
                dest = slot + rank
                tl.store(positions_ptr + dest * 3, px, mask=keep)
                tl.store(positions_ptr + dest * 3 + 1, py, mask=keep)
                tl.store(positions_ptr + dest * 3 + 2, pz, mask=keep)
                tl.store(sample_dirs_ptr + dest * 3, tl.zeros_like(px) + dx, mask=keep)
                tl.store(sample_dirs_ptr + dest * 3 + 1, tl.zeros_like(px) + dy, mask=keep)
                tl.store(sample_dirs_ptr + dest * 3 + 2, tl.zeros_like(px) + dz, mask=keep)
                tl.store(ts_ptr + dest, t, mask=keep)
                tl.store(dts_ptr + dest, dt, mask=keep)
                tl.store(ray_ids_ptr + dest, tl.zeros_like(dest) + ray, mask=keep)
            last = tl.max(tl.where(keep, kk, -1), axis=0)
            k_next = tl.where(last >= 0, last + 1, k_next)
            count += tl.sum(keep.to(tl.int64), axis=0)
            k += BLOCK
            t_first = _lattice_t(k, t0, k_a, t_b, k_b, t_c, step_size, ratio, max_step,
                                 POWER_BITS)
        if not WRITE:
            tl.store(counts_ptr + ray, count)
            tl.store(next_ptr + ray, k_next)


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
    k_start: torch.Tensor | None = None,
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
    # No contracted multiply-adds: the candidates must match the reference bit for bit.
    launch = dict(RES=res, N_CASCADES=n_cascades, BLOCK=block, num_warps=DEFAULT_NUM_WARPS,
                  enable_fp_fusion=False)
    counts = torch.empty(n_rays, dtype=torch.int64, device=device)  # [R]
    ray_next = None
    if exponential:
        max_step = default_max_step_size(res) if max_step_size is None else float(max_step_size)
        a, c, b = fp32(step_size), fp32(cone_angle), fp32(max_step)
        lattice = lattice_params_triton(t_near, jitter, a, c, b)  # one launch
        k0 = (torch.zeros(n_rays, dtype=torch.int64, device=device) if k_start is None
              else k_start.to(device=device, dtype=torch.int64))
        per_ray = [x.contiguous() for x in (lattice.t0, lattice.k_a, lattice.t_b, lattice.k_b,
                                            lattice.t_c, k0)]
        ratio = fp32(1.0 + c)
        lattice_args = (max_steps, a, c, ratio, b)
        lattice_launch = dict(launch, POWER_BITS=power_bits(a, c, b))
        ray_next = torch.empty(n_rays, dtype=torch.int64, device=device)
        if n_rays > 0:
            _lattice_kernel[(n_rays,)](
                origins, directions, t_far, *per_ray, occ, counts, ray_next, counts, counts,
                origins, origins, t_far, t_far, counts, *lattice_args, WRITE=False,
                **lattice_launch,
            )
    elif n_rays > 0:
        _march_count_kernel[(n_rays,)](
            origins, directions, t_near, t_far, jitter, occ, counts, max_steps, step_size,
            **launch,
        )
    packing = pack_rays(counts, capacity, active)  # capacity None: the one host read
    capacity, fits, ray_starts = packing.capacity, packing.fits, packing.ray_starts

    positions = torch.empty((capacity, 3), dtype=torch.float32, device=device)
    sample_dirs = torch.empty((capacity, 3), dtype=torch.float32, device=device)
    ts = torch.empty(capacity, dtype=torch.float32, device=device)
    dts = torch.empty(capacity, dtype=torch.float32, device=device)
    ray_ids = torch.empty(capacity, dtype=torch.int64, device=device)
    if n_rays > 0 and capacity > 0 and exponential:
        _lattice_kernel[(n_rays,)](
            origins, directions, t_far, *per_ray, occ, counts, ray_next, ray_starts, fits,
            positions, sample_dirs, ts, dts, ray_ids, *lattice_args, WRITE=True,
            **lattice_launch,
        )
    elif n_rays > 0 and capacity > 0:
        _march_write_kernel[(n_rays,)](
            origins, directions, t_near, t_far, jitter, occ, ray_starts, fits,
            positions, sample_dirs, ts, dts, ray_ids, max_steps, step_size,
            **launch,
        )
    if capacity > 0:
        _pad_kernel[(triton.cdiv(capacity, _PAD_BLOCK),)](
            packing.n_samples, positions, sample_dirs, ts, dts, ray_ids, capacity, n_rays,
            BLOCK=_PAD_BLOCK,
        )
    samples = packed_samples((positions, sample_dirs, ts, dts, ray_ids), packing, n_rays)
    samples.ray_next = ray_next
    return samples
