"""The scene's box, its occupancy cascades and the marching step rules (instant-ngp's).

Everything here is geometry that the marchers (both backends), the occupancy grid, the field
and the renderer share; docs/design.md ("Large scenes") restates instant-ngp's formulas.
Positions are in unit-cube coordinates: the modelled box is ``0.5 +- aabb_scale / 2`` per axis
(the unit cube for aabb_scale 1), covered by K cascades of ``res^3`` occupancy cells, cascade k
spanning ``0.5 +- 2^(k-1)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Instant-ngp's step for synthetic scenes: sqrt(3)/1024, the cube diagonal in 1024 steps.
DEFAULT_STEP_SIZE = math.sqrt(3.0) / 1024.0
DEFAULT_MAX_STEPS = 1024
# instant-ngp's NERF_CASCADES(): the most cascades (aabb_scale is capped at 2^(8-1) = 128).
MAX_CASCADES = 8
MAX_AABB_SCALE = float(2 ** (MAX_CASCADES - 1))
# instant-ngp's cone angle for aabb_scale > 1 (testbed: 1/256; 0 for aabb_scale <= 1).
LARGE_SCENE_CONE_ANGLE = 1.0 / 256.0


def cascades_for_aabb_scale(aabb_scale: float) -> int:
    """instant-ngp's cascade count: 1 + ceil(log2(aabb_scale)), from 1 up to MAX_CASCADES."""
    scale = min(float(aabb_scale), MAX_AABB_SCALE)
    k = 0
    while 2**k < scale:
        k += 1
    return k + 1


def aabb_bounds(aabb_scale: float) -> tuple[float, float]:
    """The scene box per axis, ``0.5 -+ s / 2`` with s = min(aabb_scale, 128) (instant-ngp)."""
    half = 0.5 * min(float(aabb_scale), MAX_AABB_SCALE)
    return 0.5 - half, 0.5 + half


def default_cone_angle(aabb_scale: float) -> float:
    """instant-ngp: 0 (constant steps) for aabb_scale <= 1, else 1/256."""
    return 0.0 if aabb_scale <= 1 else LARGE_SCENE_CONE_ANGLE


def default_max_step_size(resolution: int) -> float:
    """instant-ngp's MAX_CONE_STEPSIZE: sqrt(3) * 2^(NERF_CASCADES - 1) / grid resolution (the
    diagonal of a cell of the coarsest cascade it supports; sqrt(3) at resolution 128)."""
    return math.sqrt(3.0) * 2 ** (MAX_CASCADES - 1) / resolution


def flat_occupancy(occupancy: Tensor) -> tuple[Tensor, int, int]:
    """(flat occupancy, K, res) of a bitfield [res, res, res] or [K, res, res, res]."""
    if occupancy.dim() == 3 and len(set(occupancy.shape)) == 1:
        return occupancy.reshape(-1), 1, occupancy.shape[0]
    if occupancy.dim() == 4 and len(set(occupancy.shape[1:])) == 1:
        if not 1 <= occupancy.shape[0] <= MAX_CASCADES:
            raise ValueError(f"occupancy: 1 to {MAX_CASCADES} cascades, got {occupancy.shape[0]}")
        return occupancy.reshape(-1), occupancy.shape[0], occupancy.shape[1]
    raise ValueError("occupancy must be [res, res, res] or [K, res, res, res], got "
                     f"{list(occupancy.shape)}")


def cascade_cells(px: Tensor, py: Tensor, pz: Tensor, dt: Tensor | None, n_cascades: int,
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


def ray_box(origins: Tensor, directions: Tensor, aabb_scale: float = 1.0
            ) -> tuple[Tensor, Tensor]:
    """Entry and exit distances (t_near [R], t_far [R]) of rays with the scene's box; a ray
    that misses it gets the empty segment [0, 0).

    The slab method of :func:`nerfmine.ops.rays.ray_aabb` (axis-parallel rays handled with
    +-inf, t_near clamped to 0) with the bounds as Python scalars: the same fp32 values as
    device tensors would give, without a host-to-device copy (a synchronisation). Both marchers
    take their segments from here.
    """
    lo, hi = aabb_bounds(aabb_scale)
    parallel = directions == 0  # [R, 3]
    safe_d = torch.where(parallel, 1.0, directions)  # [R, 3]
    t0 = (lo - origins) / safe_d  # [R, 3]
    t1 = (hi - origins) / safe_d  # [R, 3]
    t_min = torch.minimum(t0, t1)  # [R, 3]
    t_max = torch.maximum(t0, t1)  # [R, 3]
    inside = (origins >= lo) & (origins <= hi)  # [R, 3]
    inf = math.inf
    t_min = torch.where(parallel, torch.where(inside, -inf, inf), t_min)
    t_max = torch.where(parallel, torch.where(inside, inf, -inf), t_max)
    t_near = t_min.amax(dim=-1).clamp_min(0.0)  # [R]
    t_far = t_max.amin(dim=-1)  # [R]
    hit = t_far > t_near  # [R]
    return torch.where(hit, t_near, 0.0), torch.where(hit, t_far, 0.0)


def fp32(value: float) -> float:
    """``value`` rounded to float32 (what a Triton kernel receives for a Python float)."""
    return float(torch.tensor(value, dtype=torch.float32))


def cone_step(t: Tensor, cone_angle: float, min_step: float, max_step: float) -> Tensor:
    """instant-ngp's ``calc_dt``: clamp(t * cone_angle, min_step, max_step). # like t"""
    return (t * cone_angle).clamp(min=min_step, max=max_step)
