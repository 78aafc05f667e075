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

import torch
from torch import Tensor

from nerfmine.ops.backends import check_backend, triton_module
from nerfmine.ops.cone_lattice import (
    candidates_before,
    lattice_params,
    lattice_t,
    power_bits,
    ratio_squares,
)
from nerfmine.ops.packed import PackedSamples, pack_rays, packed_samples, ray_slots_active
from nerfmine.ops.scene_box import (
    DEFAULT_MAX_STEPS,
    DEFAULT_STEP_SIZE,
    cascade_cells,
    cone_step,
    default_max_step_size,
    flat_occupancy,
    fp32,
    ray_box,
)

# Candidates ([rays, max_steps]) examined at once by the reference marcher: bounds its memory.
_CANDIDATES_PER_CHUNK = 1 << 22


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
    linear = cascade_cells(positions[..., 0], positions[..., 1], positions[..., 2], dt,
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
    k_start: Tensor | None = None,
) -> PackedSamples:
    """March rays through the scene's box, keeping candidates in occupied cells.

    The box is ``[0.5 - s/2, 0.5 + s/2]^3`` with ``s = aabb_scale`` (the unit cube by default);
    ``[t_near, t_far)`` is the ray's segment inside it.

    Constant steps (``cone_angle == 0``): candidate k of ray r sits at
    ``t = t_near + (k + u_r) * step_size`` (``u_r = jitter[r]``, 0.5 without jitter) for
    ``k < max_steps`` and ``t < t_far``; its interval is ``step_size``.

    Exponential steps (``cone_angle > 0``, instant-ngp's large-scene marching): with
    ``dt(t) = clamp(t * cone_angle, step_size, max_step_size)``, the candidates are instant-ngp's
    walk ``t_0 = t_near + u_r * dt(t_near)``, ``t_{i+1} = t_i + dt(t_i)``, written in closed
    form (:mod:`nerfmine.ops.cone_lattice`: equal in exact arithmetic, within fp32 rounding of
    the recurrence), so that all of a ray's candidates are tested in parallel; a kept candidate
    is a sample at ``t_i`` of interval ``dt(t_i)``, and a ray stops after ``max_steps`` kept
    samples (instant-ngp's NERF_STEPS counts samples, not candidates). Every candidate before
    ``t_far`` is looked up, including those instant-ngp's ``advance_to_next_voxel`` would jump
    over after an empty cell (they lie in that empty cell's exit path; looked up, they are
    kept only where their own cell is occupied). ``PackedSamples.ray_next`` gives, per ray,
    the candidate after its last kept one. The torch reference reads the host once per window
    of candidates.

    A candidate is kept when its occupancy cell is True: with one cascade the cell
    ``floor(position * res)`` of ``occupancy[ix, iy, iz]``; with K cascades the cell of the
    finest cascade containing the position (coarser when the step exceeds half a cell), see
    :func:`nerfmine.ops.scene_box.cascade_cells`.

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
        k_start: [R] int64, ``cone_angle > 0`` only: the index of each ray's first candidate
            (0 by default). The ``ray_next`` of a march that stopped at ``max_steps`` samples
            continues it exactly (segmented rendering).
        n_active: optional 0-dim integer device tensor: only rays ``r < n_active`` are
            marched; the others get no samples and ``ray_valid`` False. It lets a caller with
            a fixed number of ray slots (a captured CUDA graph) choose the ray count on device.
    """
    check_backend("march_rays", backend)
    if not cone_angle >= 0:
        raise ValueError(f"march_rays: cone_angle must be >= 0, got {cone_angle}")
    if k_start is not None and not cone_angle > 0:
        raise ValueError("march_rays: k_start continues an exponential march (cone_angle > 0)")
    if backend == "triton":
        return triton_module("march", origins, directions, occupancy).march_rays_triton(
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
            k_start=k_start,
        )

    occ_flat, n_cascades, res = flat_occupancy(occupancy)
    device = origins.device
    origins = origins.float()
    directions = directions.float()
    n_rays = origins.shape[0]
    if jitter is None:
        jitter = torch.full((n_rays,), 0.5, device=device)
    jitter = jitter.float()
    # Misses get the empty segment [0, 0), keeping infinities out of the candidate grid.
    t_near, t_far = ray_box(origins, directions, aabb_scale)  # [R], [R]
    active = ray_slots_active(n_rays, n_active, device)  # [R] bool or None
    if active is not None:
        t_far = torch.where(active, t_far, t_near)  # an inactive ray has an empty segment
    if cone_angle > 0:
        if max_step_size is None:
            max_step_size = default_max_step_size(res)
        return _march_lattice(origins, directions, t_near, t_far, jitter, occ_flat, n_cascades,
                              res, float(step_size), float(cone_angle), float(max_step_size),
                              int(max_steps), capacity, active, k_start)
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
    packing = pack_rays(counts, capacity, active, starts=starts)
    return packed_samples((positions, sample_dirs, ts, dts, ray_ids), packing, n_rays)


def _march_lattice(origins, directions, t_near, t_far, jitter, occ_flat, n_cascades, res,
                   step_size, cone_angle, max_step, max_steps, capacity, active=None,
                   k_start=None) -> PackedSamples:
    """The ``cone_angle > 0`` march of :func:`march_rays` (reference): the candidates of
    :mod:`nerfmine.ops.cone_lattice`, tested in windows of candidates for all rays at once; a
    candidate is kept when its cell is occupied, until the ray has ``max_steps`` samples."""
    device = origins.device
    n_rays = origins.shape[0]
    lattice = lattice_params(t_near, jitter, step_size, cone_angle, max_step)
    squares = ratio_squares(cone_angle, power_bits(step_size, cone_angle, max_step))
    k0 = (torch.zeros(n_rays, dtype=torch.int64, device=device) if k_start is None
          else k_start.to(device=device, dtype=torch.int64))
    count = torch.zeros(n_rays, dtype=torch.int64, device=device)  # kept samples so far
    next_k = k0.clone()  # [R], after the last kept candidate
    n_cand = (candidates_before(t_far, lattice, step_size, cone_angle, max_step) - k0)
    n_cand = int(n_cand.clamp(min=0).max()) if n_rays > 0 and max_steps > 0 else 0
    window = max(1, _CANDIDATES_PER_CHUNK // max(1, n_rays))
    kept = []
    for w0 in range(0, n_cand, window):
        j = torch.arange(w0, min(n_cand, w0 + window), device=device)  # [K]
        k = k0[:, None] + j[None, :]  # [R, K]
        t = lattice_t(k, lattice, step_size, cone_angle, max_step, squares)  # [R, K]
        dt = cone_step(t, fp32(cone_angle), fp32(step_size), fp32(max_step))
        px, py, pz = (origins[:, a, None] + t * directions[:, a, None] for a in range(3))
        linear = cascade_cells(px, py, pz, dt, n_cascades, res)  # [R, K]
        hit = (t < t_far[:, None]) & occ_flat[linear]  # [R, K]
        hit_i = hit.long()
        rank = count[:, None] + hit_i.cumsum(dim=1) - hit_i  # [R, K]
        keep = hit & (rank < max_steps)
        if keep.any():
            ray, col = torch.nonzero(keep, as_tuple=True)
            kept.append((ray, rank[ray, col], t[ray, col], dt[ray, col],
                         torch.stack([px[ray, col], py[ray, col], pz[ray, col]], dim=-1)))
            last = torch.where(keep, k, -1).amax(dim=1)  # [R]
            next_k = torch.where(last >= 0, last + 1, next_k)
        count += keep.sum(dim=1)
        done = (count >= max_steps) | (t[:, -1] >= t_far)  # t grows with k
        if bool(done.all()):
            break

    packing = pack_rays(count, capacity, active)  # [R] each
    capacity, fits, starts = packing.capacity, packing.fits, packing.starts
    trash = capacity
    positions = torch.full((capacity + 1, 3), 0.5, device=device)
    sample_dirs = torch.zeros((capacity + 1, 3), device=device)
    sample_dirs[:, 2] = 1.0
    ts = torch.zeros(capacity + 1, device=device)
    dts = torch.zeros(capacity + 1, device=device)
    ray_ids = torch.full((capacity + 1,), n_rays, dtype=torch.int64, device=device)
    if kept:
        ray, rank, t, dt, pos = (torch.cat(parts) for parts in zip(*kept))
        dest = torch.where(fits[ray], starts[ray] + rank, trash)
        positions.index_copy_(0, dest, pos)
        sample_dirs.index_copy_(0, dest, directions[ray])
        ts.index_copy_(0, dest, t)
        dts.index_copy_(0, dest, dt)
        ray_ids.index_copy_(0, dest, ray)
    samples = packed_samples((positions, sample_dirs, ts, dts, ray_ids), packing, n_rays)
    samples.ray_next = next_k
    return samples
