"""Ray marching through the occupancy grid into fixed-capacity packed sample buffers.

:func:`march_rays` implements instant-ngp's empty-space skipping (see ``docs/design.md``, "The
packed sample layout" and "Large scenes"): candidates are spaced along the ray from its entry
into the scene's box and kept when the occupancy cell that contains them is occupied. The box is
``0.5 +- aabb_scale / 2`` (the unit cube for aabb_scale 1); occupancy comes in K cascades, the
finest one containing a candidate (or coarser for long steps) is looked up. With ``cone_angle``
0 the step is constant; above 0 it grows with the distance (exponential stepping).
The result is a :class:`PackedSamples` whose buffers have a fixed capacity, so that a training
step never needs the host to know how many samples were produced. Nothing here is
differentiable: marching produces positions, the network is evaluated afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nerfmine.ops.rays import ray_aabb

# Instant-ngp's step for synthetic scenes: sqrt(3)/1024, the cube diagonal in 1024 steps.
DEFAULT_STEP_SIZE = math.sqrt(3.0) / 1024.0
DEFAULT_MAX_STEPS = 1024
# Candidates ([rays, max_steps]) examined at once by the reference marcher: bounds its memory.
_CANDIDATES_PER_CHUNK = 1 << 22
# instant-ngp's NERF_CASCADES(): the most cascades (aabb_scale is capped at 2^(8-1) = 128).
MAX_CASCADES = 8
# instant-ngp's cone angle for aabb_scale > 1 (testbed: 1/256; 0 for aabb_scale <= 1).
LARGE_SCENE_CONE_ANGLE = 1.0 / 256.0
# Distance to a cell boundary along an axis the ray does not move on (Triton uses the same).
_NO_BOUNDARY = 3.0e38


def cascades_for_aabb_scale(aabb_scale: float) -> int:
    """instant-ngp's cascade count: 1 + ceil(log2(aabb_scale)), from 1 up to MAX_CASCADES."""
    scale = min(float(aabb_scale), float(2 ** (MAX_CASCADES - 1)))
    k = 0
    while 2**k < scale:
        k += 1
    return k + 1


def aabb_bounds(aabb_scale: float) -> tuple[float, float]:
    """The scene box per axis, ``0.5 -+ s / 2`` with s = min(aabb_scale, 128) (instant-ngp)."""
    half = 0.5 * min(float(aabb_scale), float(2 ** (MAX_CASCADES - 1)))
    return 0.5 - half, 0.5 + half


def default_cone_angle(aabb_scale: float) -> float:
    """instant-ngp: 0 (constant steps) for aabb_scale <= 1, else 1/256."""
    return 0.0 if aabb_scale <= 1 else LARGE_SCENE_CONE_ANGLE


def default_max_step_size(resolution: int) -> float:
    """instant-ngp's MAX_CONE_STEPSIZE: sqrt(3) * 2^(NERF_CASCADES - 1) / grid resolution (the
    diagonal of a cell of the coarsest cascade it supports; sqrt(3) at resolution 128)."""
    return math.sqrt(3.0) * 2 ** (MAX_CASCADES - 1) / resolution


def _cascade_cells(px: Tensor, py: Tensor, pz: Tensor, dt: Tensor | None, n_cascades: int,
                   res: int) -> Tensor:
    """Linear occupancy index ((mip * res + ix) * res + iy) * res + iz of positions. # like px

    mip (instant-ngp's ``mip_from_dt``): the finest cascade containing the point, the count of
    j in 1..K-1 with max|p - 0.5| >= 2^(j-2) (its ``mip_from_pos``), raised to the count of j
    with dt * 2 * res >= 2^(j-1) when the step is long. The cell is ``clamp(floor(q * res))``
    of ``q = (p - 0.5) * 2^-mip + 0.5`` (``q = p`` in cascade 0). Comparisons, products with
    powers of two and floor only, so the Triton kernel reproduces it bit for bit.
    """
    if n_cascades == 1:
        q = (px, py, pz)
        mip = None
    else:
        x = torch.maximum(torch.maximum((px - 0.5).abs(), (py - 0.5).abs()), (pz - 0.5).abs())
        mip = torch.zeros(px.shape, dtype=torch.int64, device=px.device)
        mip_dt = torch.zeros_like(mip)
        dtr = dt * float(2 * res) if dt is not None else None
        for j in range(1, n_cascades):
            mip += (x >= 2.0 ** (j - 2)).long()
            if dtr is not None:
                mip_dt += (dtr >= 2.0 ** (j - 1)).long()
        mip = torch.maximum(mip, mip_dt)
        scale = torch.ldexp(torch.ones_like(px), -mip)
        q = tuple(torch.where(mip > 0, (p - 0.5) * scale + 0.5, p) for p in (px, py, pz))
    cx, cy, cz = ((c * res).floor().long().clamp_(0, res - 1) for c in q)
    linear = (cx * res + cy) * res + cz
    return linear if mip is None else mip * res**3 + linear


def _flat_occupancy(occupancy: Tensor) -> tuple[Tensor, int, int]:
    """(flat bool occupancy, K, res) of [res, res, res] or [K, res, res, res]."""
    if occupancy.dim() == 3 and len(set(occupancy.shape)) == 1:
        return occupancy.reshape(-1), 1, occupancy.shape[0]
    if occupancy.dim() == 4 and len(set(occupancy.shape[1:])) == 1:
        if not 1 <= occupancy.shape[0] <= MAX_CASCADES:
            raise ValueError(f"occupancy: 1 to {MAX_CASCADES} cascades, got {occupancy.shape[0]}")
        return occupancy.reshape(-1), occupancy.shape[0], occupancy.shape[1]
    raise ValueError("occupancy must be [res, res, res] or [K, res, res, res], got "
                     f"{list(occupancy.shape)}")


@dataclass
class PackedSamples:
    """Samples of ``n_rays`` rays packed ray after ray into buffers of ``capacity`` slots.

    Samples of one ray are contiguous and in increasing ``t``; rays appear in order. Slots
    ``>= n_samples`` are padding: ``dt = 0``, ``ray_ids = n_rays``, ``positions = 0.5``,
    ``directions = (0, 0, 1)``. A ray with samples is kept when its samples and those of every
    earlier ray fit in the capacity; otherwise it is dropped whole (``ray_valid`` False,
    ``ray_counts`` 0, ``ray_starts = n_samples``), so the kept rays with samples are a prefix.
    Rays without samples are always valid (they see the background).
    """

    positions: Tensor  # [C, 3] float32
    directions: Tensor  # [C, 3] float32
    t: Tensor  # [C] float32, midpoint of the sample's interval
    dt: Tensor  # [C] float32, 0 for padding
    ray_ids: Tensor  # [C] int64, n_rays for padding
    ray_starts: Tensor  # [n_rays] int64
    ray_counts: Tensor  # [n_rays] int64
    ray_valid: Tensor  # [n_rays] bool
    n_samples: Tensor  # [] int64, on device
    n_rays: int

    @property
    def capacity(self) -> int:
        """C: the number of slots of every per-sample buffer (real samples plus padding)."""
        return self.positions.shape[0]


def ray_slots_active(n_rays: int, n_active: Tensor | None, device) -> Tensor | None:
    """[R] bool, True for ray slots ``r < n_active`` (None when every slot is active)."""
    if n_active is None:
        return None
    return torch.arange(n_rays, device=device) < n_active.to(device)


def _packed(buffers, capacity, ray_starts, ray_counts, ray_valid, n_samples, n_rays):
    """PackedSamples from the reference's per-sample buffers, which carry one trash slot past
    ``capacity`` (positions, directions, t, dt, ray_ids)."""
    positions, directions, t, dt, ray_ids = (b[:capacity] for b in buffers)
    return PackedSamples(positions=positions, directions=directions, t=t, dt=dt,
                         ray_ids=ray_ids, ray_starts=ray_starts, ray_counts=ray_counts,
                         ray_valid=ray_valid, n_samples=n_samples, n_rays=n_rays)


def _march_chunk(
    origins: Tensor,
    directions: Tensor,
    t_near: Tensor,
    t_far: Tensor,
    jitter: Tensor,
    occupancy: Tensor,
    step_size: float,
    max_steps: int,
    n_cascades: int,
    res: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate grid of a chunk of rays: (keep [r, K] bool, t [r, K], positions [r, K, 3]).

    ``occupancy`` is flat ([n_cascades * res^3] bool)."""
    steps = torch.arange(max_steps, device=origins.device, dtype=torch.float32)  # [K]
    t = t_near[:, None] + (steps[None, :] + jitter[:, None]) * step_size  # [r, K]
    positions = origins[:, None, :] + t[..., None] * directions[:, None, :]  # [r, K, 3]
    dt = torch.full_like(t, step_size) if n_cascades > 1 else None
    linear = _cascade_cells(positions[..., 0], positions[..., 1], positions[..., 2], dt,
                            n_cascades, res)  # [r, K]
    keep = (t < t_far[:, None]) & occupancy[linear]  # [r, K]
    return keep, t, positions


def march_rays(
    origins: Tensor,
    directions: Tensor,
    occupancy: Tensor,
    step_size: float = DEFAULT_STEP_SIZE,
    max_steps: int = DEFAULT_MAX_STEPS,
    capacity: int | None = None,
    jitter: Tensor | None = None,
    backend: str = "torch",
    n_active: Tensor | None = None,
    *,
    aabb_scale: float = 1.0,
    cone_angle: float = 0.0,
    max_step_size: float | None = None,
    t_start: Tensor | None = None,
) -> PackedSamples:
    """March rays through the scene's box, keeping candidates in occupied cells.

    The box is ``[0.5 - s/2, 0.5 + s/2]^3`` with ``s = aabb_scale`` (the unit cube by default);
    ``[t_near, t_far)`` is the ray's segment inside it.

    Constant steps (``cone_angle == 0``): candidate k of ray r sits at
    ``t = t_near + (k + u_r) * step_size`` (``u_r = jitter[r]``, 0.5 without jitter) for
    ``k < max_steps`` and ``t < t_far``; its interval is ``step_size``.

    Exponential steps (``cone_angle > 0``, instant-ngp's large-scene marching): with
    ``dt(t) = clamp(t * cone_angle, step_size, max_step_size)``, the walk starts at
    ``t_0 = t_near + u_r * dt(t_near)`` and advances ``t_{i+1} = t_i + dt(t_i)`` while
    ``t < t_far``; a kept candidate is a sample at ``t_i`` of interval ``dt(t_i)``. After an empty
    candidate the walk skips, without looking, every candidate before the exit of that empty cell
    (instant-ngp's ``advance_to_next_voxel``: DDA distance to the cell's boundary, then regular
    steps), and a ray stops after ``max_steps`` kept samples (instant-ngp's NERF_STEPS counts
    samples, not candidates). The torch reference of this mode reads the host every few steps.

    A candidate is kept when its occupancy cell is True: with one cascade the cell
    ``floor(position * res)`` of ``occupancy[ix, iy, iz]``; with K cascades the cell of the
    finest cascade containing the position (coarser when the step exceeds half a cell), see
    :func:`_cascade_cells`.

    Args:
        origins: [R, 3] ray origins in unit-cube coordinates.
        directions: [R, 3] unit ray directions.
        occupancy: [res, res, res] bool, indexed [ix, iy, iz], or [K, res, res, res] (K
            cascades, cascade k covering [0.5 - 2^(k-1), 0.5 + 2^(k-1)]^3).
        step_size: distance between candidates (the smallest step with ``cone_angle > 0``).
        max_steps: candidates per ray at most (kept samples per ray with ``cone_angle > 0``).
        capacity: slots of the output buffers. Given, the call never synchronises with the host
            (except the torch reference with ``cone_angle > 0``) and rays that do not fit whole
            are dropped; ``None`` sizes the buffers exactly (one host synchronisation).
        jitter: [R] offsets in [0, 1) of the first candidate, or None for 0.5.
        backend: "torch" (reference) or "triton".
        aabb_scale: size of the scene's box (instant-ngp's aabb_scale, at most 128).
        cone_angle: 0 for constant steps, else the step's growth per unit distance (instant-ngp
            uses 1/256 for aabb_scale > 1).
        max_step_size: the largest step with ``cone_angle > 0``; None for instant-ngp's
            :func:`default_max_step_size` of the occupancy resolution.
        t_start: [R] float32, ``cone_angle > 0`` only: the first candidate of each walk instead
            of ``t_near + u dt(t_near)``. ``t + dt`` of a ray's last sample continues its walk
            exactly where a call with ``max_steps`` samples stopped (segmented rendering).
        n_active: optional 0-dim integer device tensor: only rays ``r < n_active`` are
            marched; the others get no samples and ``ray_valid`` False. It lets a caller with
            a fixed number of ray slots (a captured CUDA graph) choose the ray count on device.
    """
    if backend not in ("torch", "triton"):
        raise ValueError(f"march_rays: unknown backend {backend!r}; use 'torch' or 'triton'")
    if not cone_angle >= 0:
        raise ValueError(f"march_rays: cone_angle must be >= 0, got {cone_angle}")
    if t_start is not None and not cone_angle > 0:
        raise ValueError("march_rays: t_start continues an exponential walk (cone_angle > 0)")
    if backend == "triton":
        from nerfmine.ops._triton.march import march_rays_triton

        return march_rays_triton(
            origins,
            directions,
            occupancy,
            step_size=step_size,
            max_steps=max_steps,
            capacity=capacity,
            jitter=jitter,
            aabb_scale=aabb_scale,
            cone_angle=cone_angle,
            max_step_size=max_step_size,
            n_active=n_active,
            t_start=t_start,
        )

    occ_flat, n_cascades, res = _flat_occupancy(occupancy)
    device = origins.device
    origins = origins.float()
    directions = directions.float()
    n_rays = origins.shape[0]
    if jitter is None:
        jitter = torch.full((n_rays,), 0.5, device=device)
    jitter = jitter.float()
    # Bounds as device tensors: Python floats would be copied to the device (a host sync).
    lo, hi = aabb_bounds(aabb_scale)
    box_min, box_max = origins.new_full((3,), lo), origins.new_full((3,), hi)  # [3], [3]
    t_near, t_far = ray_aabb(origins, directions, box_min, box_max)  # [R], [R]
    # Misses become the empty segment [0, 0), keeping infinities out of the candidate grid.
    hit = t_far > t_near  # [R]
    t_near = torch.where(hit, t_near, 0.0).float()  # [R]
    t_far = torch.where(hit, t_far, 0.0).float()  # [R]
    active = ray_slots_active(n_rays, n_active, device)  # [R] bool or None
    if active is not None:
        t_far = torch.where(active, t_far, t_near)  # an inactive ray has an empty segment
    if cone_angle > 0:
        if max_step_size is None:
            max_step_size = default_max_step_size(res)
        return _march_exponential(origins, directions, t_near, t_far, jitter, occ_flat,
                                  n_cascades, res, float(step_size), float(cone_angle),
                                  float(max_step_size), int(max_steps), capacity, active,
                                  t_start)
    chunk = max(1, _CANDIDATES_PER_CHUNK // max(1, max_steps))

    def candidates(lo: int, hi: int) -> tuple[Tensor, Tensor, Tensor]:
        return _march_chunk(
            origins[lo:hi],
            directions[lo:hi],
            t_near[lo:hi],
            t_far[lo:hi],
            jitter[lo:hi],
            occ_flat,
            step_size,
            max_steps,
            n_cascades,
            res,
        )

    if capacity is None:
        # Evaluation: count first, then size the buffers exactly (the one host read).
        total = torch.zeros((), dtype=torch.int64, device=device)
        for lo in range(0, n_rays, chunk):
            total = total + candidates(lo, lo + chunk)[0].sum()
        capacity = int(total.item())

    # One trash slot at index `capacity` absorbs every candidate that is not written.
    trash = capacity
    positions = torch.full((capacity + 1, 3), 0.5, device=device)  # [C+1, 3]
    sample_dirs = torch.zeros((capacity + 1, 3), device=device)  # [C+1, 3]
    sample_dirs[:, 2] = 1.0
    ts = torch.zeros(capacity + 1, device=device)  # [C+1]
    dts = torch.zeros(capacity + 1, device=device)  # [C+1]
    ray_ids = torch.full((capacity + 1,), n_rays, dtype=torch.int64, device=device)  # [C+1]

    starts_all = []
    counts_all = []
    offset = torch.zeros((), dtype=torch.int64, device=device)  # samples of earlier chunks
    for lo in range(0, n_rays, chunk):
        keep, t, pos = candidates(lo, lo + chunk)  # [r, K], [r, K], [r, K, 3]
        r = keep.shape[0]
        rank = keep.long().cumsum(dim=1)  # [r, K], 1-based rank of a kept candidate
        counts = rank[:, -1] if max_steps > 0 else torch.zeros(r, dtype=torch.int64, device=device)
        starts = offset + counts.cumsum(0) - counts  # [r], exclusive cumsum
        offset = offset + counts.sum()
        fits = starts + counts <= capacity  # [r]; a prefix of all rays, since starts grow
        dest = torch.where(keep & fits[:, None], starts[:, None] + rank - 1, trash)  # [r, K]
        dest = dest.reshape(-1)  # [r*K]
        ids = torch.arange(lo, lo + r, device=device)  # [r]
        positions.index_copy_(0, dest, pos.reshape(-1, 3))
        ray_dirs = directions[lo : lo + r, None, :].expand_as(pos)  # [r, K, 3]
        sample_dirs.index_copy_(0, dest, ray_dirs.reshape(-1, 3))
        ts.index_copy_(0, dest, t.reshape(-1))
        dts.index_copy_(0, dest, torch.full_like(t, step_size).reshape(-1))
        ray_ids.index_copy_(0, dest, ids[:, None].expand(r, max_steps).reshape(-1))
        starts_all.append(starts)
        counts_all.append(counts)

    if n_rays > 0:
        starts = torch.cat(starts_all)  # [R]
        counts = torch.cat(counts_all)  # [R]
    else:
        starts = torch.zeros(0, dtype=torch.int64, device=device)
        counts = torch.zeros(0, dtype=torch.int64, device=device)
    fits = starts + counts <= capacity  # [R], a prefix of the rays
    ray_counts = torch.where(fits, counts, 0)  # [R]
    n_samples = ray_counts.sum()  # [] int64
    ray_starts = torch.where(fits, starts, n_samples)  # [R]
    ray_valid = fits | (counts == 0)  # [R]; an empty ray always fits: it sees the background
    if active is not None:
        ray_valid = ray_valid & active
    return _packed((positions, sample_dirs, ts, dts, ray_ids), capacity, ray_starts,
                   ray_counts, ray_valid, n_samples, n_rays)


def _fp32(value: float) -> float:
    """``value`` rounded to float32 (what a Triton kernel receives for a Python float)."""
    return float(torch.tensor(value, dtype=torch.float32))


def _step(t: Tensor, cone_angle: float, min_step: float, max_step: float) -> Tensor:
    """instant-ngp's ``calc_dt``: clamp(t * cone_angle, min_step, max_step). # like t"""
    return (t * cone_angle).clamp(min=min_step, max=max_step)


def walk_start(t_near: Tensor, jitter: Tensor, step_size: float, cone_angle: float,
               max_step: float, t_start: Tensor | None = None) -> Tensor:
    """First candidate of each exponential walk: ``t_near + u * dt(t_near)`` (instant-ngp's
    jittered start), or ``t_start``. Both backends take it from here. # [R] float32"""
    step_size, cone_angle, max_step = (_fp32(v) for v in (step_size, cone_angle, max_step))
    if t_start is not None:
        return t_start.to(device=t_near.device, dtype=torch.float32).clone()
    return t_near + jitter * _step(t_near, cone_angle, step_size, max_step)


def _distance_to_next_voxel(px, py, pz, dx, dy, dz, ix, iy, iz, mip, res: int) -> Tensor:
    """instant-ngp's ``distance_to_next_voxel`` in the cells of cascade ``mip`` (DDA): the ray
    distance to the nearest cell boundary ahead, >= 0. ``i*`` are 1 / direction; axes with a zero
    direction never reach a boundary (+inf). Products only (no division), as in the kernel."""
    scale = torch.ldexp(torch.ones_like(px), -mip)  # 2^-mip
    cell = scale * float(res)  # cells per unit length in cascade mip
    inv_cell = torch.ldexp(torch.full_like(px, 1.0 / res), mip)  # cell size
    dist = None
    for p, d, inv in ((px, dx, ix), (py, dy, iy), (pz, dz, iz)):
        q = cell * (p - 0.5)
        half = torch.where(d > 0, 0.5, torch.where(d < 0, -0.5, 0.0))
        axis = ((q + 0.5 + half).floor() - q) * inv
        axis = torch.where(d == 0, _NO_BOUNDARY, axis)
        dist = axis if dist is None else torch.minimum(dist, axis)
    return (dist * inv_cell).clamp(min=0.0)


def _march_exponential(origins, directions, t_near, t_far, jitter, occ_flat, n_cascades, res,
                       step_size, cone_angle, max_step, max_steps, capacity,
                       active=None, t_start=None) -> PackedSamples:
    """The ``cone_angle > 0`` walk of :func:`march_rays` (reference): every live ray advances one
    candidate per iteration; kept samples are gathered, then packed in ray order."""
    device = origins.device
    n_rays = origins.shape[0]
    # The kernel receives fp32 scalars: clamp to the same values.
    step_size, cone_angle, max_step = (_fp32(v) for v in (step_size, cone_angle, max_step))
    safe = torch.where(directions == 0, 1.0, directions)
    inv_dir = 1.0 / safe  # [R, 3]; unused where the direction is 0
    t = walk_start(t_near, jitter, step_size, cone_angle, max_step, t_start)  # [R]
    target = t_near.clone()  # [R]; candidates before it are skipped
    count = torch.zeros(n_rays, dtype=torch.int64, device=device)  # kept samples so far
    alive_idx = torch.arange(n_rays, device=device)[t < t_far]  # [A], rays still walking
    kept_ray, kept_rank, kept_t, kept_dt, kept_pos = [], [], [], [], []
    while max_steps > 0 and alive_idx.numel() > 0:
        r = alive_idx
        tr = t[r]
        dt = _step(tr, cone_angle, step_size, max_step)
        o, d = origins[r], directions[r]
        px, py, pz = (o[:, a] + tr * d[:, a] for a in range(3))
        linear = _cascade_cells(px, py, pz, dt, n_cascades, res)
        test = tr >= target[r]
        occupied = occ_flat[linear]
        keep = test & occupied
        if keep.any():
            kept_ray.append(r[keep])
            kept_rank.append(count[r][keep])
            kept_t.append(tr[keep])
            kept_dt.append(dt[keep])
            kept_pos.append(torch.stack([px, py, pz], dim=-1)[keep])
        count[r] += keep.long()
        empty = test & ~occupied
        if empty.any():
            mip = linear // res**3
            inv = inv_dir[r]
            dist = _distance_to_next_voxel(px, py, pz, d[:, 0], d[:, 1], d[:, 2], inv[:, 0],
                                           inv[:, 1], inv[:, 2], mip, res)
            target[r] = torch.where(empty, tr + dist, target[r])
        t_new = tr + dt
        t[r] = t_new
        alive_idx = r[(t_new < t_far[r]) & (count[r] < max_steps)]

    counts = count  # [R]
    ends = counts.cumsum(0)  # [R]
    if capacity is None:
        capacity = int(ends[-1]) if n_rays > 0 else 0
    starts = ends - counts
    fits = ends <= capacity  # [R], a prefix of the rays
    ray_counts = torch.where(fits, counts, 0)
    n_samples = ray_counts.sum()
    ray_starts = torch.where(fits, starts, n_samples)
    ray_valid = fits | (counts == 0)
    if active is not None:
        ray_valid = ray_valid & active

    trash = capacity
    positions = torch.full((capacity + 1, 3), 0.5, device=device)
    sample_dirs = torch.zeros((capacity + 1, 3), device=device)
    sample_dirs[:, 2] = 1.0
    ts = torch.zeros(capacity + 1, device=device)
    dts = torch.zeros(capacity + 1, device=device)
    ray_ids = torch.full((capacity + 1,), n_rays, dtype=torch.int64, device=device)
    if kept_ray:
        ray = torch.cat(kept_ray)
        dest = torch.where(fits[ray], starts[ray] + torch.cat(kept_rank), trash)
        positions.index_copy_(0, dest, torch.cat(kept_pos))
        sample_dirs.index_copy_(0, dest, directions[ray])
        ts.index_copy_(0, dest, torch.cat(kept_t))
        dts.index_copy_(0, dest, torch.cat(kept_dt))
        ray_ids.index_copy_(0, dest, ray)
    return _packed((positions, sample_dirs, ts, dts, ray_ids), capacity, ray_starts,
                   ray_counts, ray_valid, n_samples, n_rays)
