"""Ray marching through the occupancy grid into fixed-capacity packed sample buffers.

:func:`march_rays` implements instant-ngp's empty-space skipping in the unit cube (see
``docs/design.md``, "The packed sample layout"): candidates are spaced ``step_size`` apart from
the ray's entry into the cube and kept when the occupancy cell that contains them is occupied.
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


def _march_chunk(
    origins: Tensor,
    directions: Tensor,
    t_near: Tensor,
    t_far: Tensor,
    jitter: Tensor,
    occupancy: Tensor,
    step_size: float,
    max_steps: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate grid of a chunk of rays: (keep [r, K] bool, t [r, K], positions [r, K, 3])."""
    res = occupancy.shape[0]
    steps = torch.arange(max_steps, device=origins.device, dtype=torch.float32)  # [K]
    t = t_near[:, None] + (steps[None, :] + jitter[:, None]) * step_size  # [r, K]
    positions = origins[:, None, :] + t[..., None] * directions[:, None, :]  # [r, K, 3]
    cell = (positions * res).floor().long().clamp_(0, res - 1)  # [r, K, 3]
    linear = (cell[..., 0] * res + cell[..., 1]) * res + cell[..., 2]  # [r, K]
    keep = (t < t_far[:, None]) & occupancy.reshape(-1)[linear]  # [r, K]
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
) -> PackedSamples:
    """March rays through the unit cube, keeping candidates in occupied cells.

    Candidate k of ray r sits at ``t = t_near + (k + u_r) * step_size`` (``u_r = jitter[r]``,
    0.5 without jitter) for ``k < max_steps`` and ``t < t_far``; its interval is ``step_size``.
    It is kept when ``occupancy[ix, iy, iz]`` is True for the cell ``floor(position * res)``.

    Args:
        origins: [R, 3] ray origins in unit-cube coordinates.
        directions: [R, 3] unit ray directions.
        occupancy: [res, res, res] bool, indexed [ix, iy, iz].
        step_size: distance between candidates.
        max_steps: candidates per ray at most.
        capacity: slots of the output buffers. Given, the call never synchronises with the host
            and rays that do not fit whole are dropped; ``None`` sizes the buffers exactly (one
            host synchronisation, for evaluation).
        jitter: [R] offsets in [0, 1) of the first candidate, or None for 0.5.
        backend: "torch" (reference) or "triton".
        n_active: optional 0-dim integer device tensor: only rays ``r < n_active`` are
            marched; the others get no samples and ``ray_valid`` False. It lets a caller with
            a fixed number of ray slots (a captured CUDA graph) choose the ray count on device.
    """
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
            n_active=n_active,
        )
    if backend != "torch":
        raise ValueError(f"march_rays: unknown backend {backend!r}; use 'torch' or 'triton'")

    device = origins.device
    origins = origins.float()
    directions = directions.float()
    n_rays = origins.shape[0]
    if jitter is None:
        jitter = torch.full((n_rays,), 0.5, device=device)
    jitter = jitter.float()
    # Bounds as device tensors: Python floats would be copied to the device (a host sync).
    unit_min, unit_max = origins.new_zeros(3), origins.new_ones(3)  # [3], [3]
    t_near, t_far = ray_aabb(origins, directions, unit_min, unit_max)  # [R], [R]
    # Misses become the empty segment [0, 0), keeping infinities out of the candidate grid.
    hit = t_far > t_near  # [R]
    t_near = torch.where(hit, t_near, 0.0).float()  # [R]
    t_far = torch.where(hit, t_far, 0.0).float()  # [R]
    active = ray_slots_active(n_rays, n_active, device)  # [R] bool or None
    if active is not None:
        t_far = torch.where(active, t_far, t_near)  # an inactive ray has an empty segment
    chunk = max(1, _CANDIDATES_PER_CHUNK // max(1, max_steps))

    def candidates(lo: int, hi: int) -> tuple[Tensor, Tensor, Tensor]:
        return _march_chunk(
            origins[lo:hi],
            directions[lo:hi],
            t_near[lo:hi],
            t_far[lo:hi],
            jitter[lo:hi],
            occupancy,
            step_size,
            max_steps,
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
    return PackedSamples(
        positions=positions[:capacity],
        directions=sample_dirs[:capacity],
        t=ts[:capacity],
        dt=dts[:capacity],
        ray_ids=ray_ids[:capacity],
        ray_starts=ray_starts,
        ray_counts=ray_counts,
        ray_valid=ray_valid,
        n_samples=n_samples,
        n_rays=n_rays,
    )
