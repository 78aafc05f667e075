"""The packed sample layout that marching writes and compositing reads (docs/design.md).

Samples of ``n_rays`` rays are packed ray after ray into buffers of a fixed capacity, so that a
training step never needs the host to know how many samples it produced. Both marchers (the
torch reference and the Triton kernels) count each ray's samples, then decide here which rays
fit (:func:`pack_rays`) and write the kept samples at ``start + rank``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


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
    ray_next: Tensor | None = None  # [n_rays] int64, exponential steps: candidate after the last

    @property
    def capacity(self) -> int:
        """C: the number of slots of every per-sample buffer (real samples plus padding)."""
        return self.positions.shape[0]


@dataclass
class RayPacking:
    """Where each ray's samples go: the outcome of :func:`pack_rays`. All on the device."""

    starts: Tensor  # [R] int64, exclusive prefix sum of the counts (dropped rays included)
    fits: Tensor  # [R] bool, the ray's samples end within the capacity (a prefix of the rays)
    ray_starts: Tensor  # [R] int64, ``starts`` where the ray fits, else ``n_samples``
    ray_counts: Tensor  # [R] int64, the count where the ray fits, else 0
    ray_valid: Tensor  # [R] bool, fits (or has no samples) and is active
    n_samples: Tensor  # [] int64, samples of the rays that fit
    capacity: int


def ray_slots_active(n_rays: int, n_active: Tensor | None, device) -> Tensor | None:
    """[R] bool, True for ray slots ``r < n_active`` (None when every slot is active)."""
    if n_active is None:
        return None
    return torch.arange(n_rays, device=device) < n_active.to(device)


def pack_rays(counts: Tensor, capacity: int | None, active: Tensor | None = None,
              starts: Tensor | None = None) -> RayPacking:
    """Decide which rays fit in ``capacity`` slots, given each ray's sample count [R].

    ``starts`` is the exclusive prefix sum of ``counts`` (computed here when not given).
    ``capacity=None`` sizes the buffers to every sample: the one host read of a march.
    A ray fits when ``start + count <= capacity``, a prefix of the rays since starts grow; a ray
    that does not fit is dropped (count 0, start ``n_samples``) and is invalid unless it has no
    samples (it then sees the background). ``active`` ([R] bool) makes inactive slots invalid.
    """
    if starts is None:
        ends = torch.cumsum(counts, dim=0)  # [R], unclamped: dropped rays still take room
        starts = ends - counts  # [R]
    else:
        ends = starts + counts  # [R]
    if capacity is None:
        capacity = int(ends[-1].item()) if counts.shape[0] > 0 else 0
    fits = ends <= capacity  # [R], a prefix of the rays
    ray_counts = torch.where(fits, counts, 0)  # [R]
    n_samples = ray_counts.sum()  # [] int64
    ray_starts = torch.where(fits, starts, n_samples)  # [R]
    ray_valid = fits | (counts == 0)  # [R]; an empty ray always fits: it sees the background
    if active is not None:
        ray_valid = ray_valid & active
    return RayPacking(starts=starts, fits=fits, ray_starts=ray_starts, ray_counts=ray_counts,
                      ray_valid=ray_valid, n_samples=n_samples, capacity=capacity)


def packed_samples(buffers: tuple[Tensor, ...], packing: RayPacking, n_rays: int
                   ) -> PackedSamples:
    """PackedSamples of per-sample buffers (positions, directions, t, dt, ray_ids) and the
    packing; buffers may carry trailing slots past the capacity (a reference's trash slot)."""
    positions, directions, t, dt, ray_ids = (b[:packing.capacity] for b in buffers)
    return PackedSamples(positions=positions, directions=directions, t=t, dt=dt,
                         ray_ids=ray_ids, ray_starts=packing.ray_starts,
                         ray_counts=packing.ray_counts, ray_valid=packing.ray_valid,
                         n_samples=packing.n_samples, n_rays=n_rays)
