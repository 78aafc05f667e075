"""Camera rays, ray/box intersection and camera frustum tests (pure PyTorch).

Conventions (docs/design.md): OpenGL camera-to-world poses (camera looks down -z, +y up), pixel
(px, py) has camera-space direction ``((px - cx) / fx, -(py - cy) / fy, -1)``; pixel centres are
at integer + 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pixel_rays(
    c2w: torch.Tensor,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    px: torch.Tensor,
    py: torch.Tensor,
    cam_idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel positions ``(px, py)`` of cameras ``cam_idx``.

    c2w: [N, 4, 4] or [N, 3, 4]; px, py: [M] float; cam_idx: [M] int64.
    Returns origins [M, 3] and unit directions [M, 3] in the frame of ``c2w``.
    """
    if c2w.dim() != 3 or c2w.shape[1] not in (3, 4) or c2w.shape[2] != 4:
        raise ValueError(f"c2w must be [N, 4, 4] or [N, 3, 4], got {list(c2w.shape)}")
    pose = c2w[cam_idx]  # [M, 3|4, 4]
    rot = pose[:, :3, :3]  # [M, 3, 3]
    origins = pose[:, :3, 3]  # [M, 3]
    dx = (px - cx) / fx  # [M]
    dy = -(py - cy) / fy  # [M]
    d_cam = torch.stack([dx, dy, -torch.ones_like(dx)], dim=-1).to(c2w.dtype)  # [M, 3]
    d_world = torch.einsum("mij,mj->mi", rot, d_cam)  # [M, 3]
    directions = d_world / torch.linalg.vector_norm(d_world, dim=-1, keepdim=True)
    return origins.contiguous(), directions


def image_rays(
    c2w: torch.Tensor,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    width: int,
    height: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through every pixel centre of one camera, row-major (index = row * width + col).

    c2w: [4, 4] or [3, 4]. Returns origins [H*W, 3] and unit directions [H*W, 3].
    """
    device, dtype = c2w.device, c2w.dtype
    rows = torch.arange(height, device=device, dtype=dtype) + 0.5  # [H]
    cols = torch.arange(width, device=device, dtype=dtype) + 0.5  # [W]
    py, px = torch.meshgrid(rows, cols, indexing="ij")  # [H, W] each
    cam_idx = torch.zeros(height * width, dtype=torch.int64, device=device)  # [H*W]
    return pixel_rays(c2w[None], fx, fy, cx, cy, px.reshape(-1), py.reshape(-1), cam_idx)


def _bound(value, like: torch.Tensor) -> torch.Tensor:
    """A box bound as a [3] tensor on ``like``'s device; a number is filled on the device
    (no host-to-device copy, hence no synchronisation)."""
    if isinstance(value, (int, float)):
        return torch.full((3,), float(value), dtype=like.dtype, device=like.device)
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).expand(3)


def ray_aabb(
    origins: torch.Tensor,
    directions: torch.Tensor,
    aabb_min: float | Sequence[float] | torch.Tensor = 0.0,
    aabb_max: float | Sequence[float] | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slab-method intersection of rays [M, 3] with an axis-aligned box.

    Returns t_near [M] (clamped to >= 0, so origins inside the box start at 0) and t_far [M].
    A ray misses the box (or the box lies behind it) exactly when t_far < t_near; for rays
    parallel to an axis and outside that slab the values are +inf / -inf.
    """
    lo = _bound(aabb_min, origins)  # [3]
    hi = _bound(aabb_max, origins)  # [3]
    parallel = directions == 0  # [M, 3]
    safe_d = torch.where(parallel, torch.ones_like(directions), directions)  # [M, 3]
    t0 = (lo - origins) / safe_d  # [M, 3]
    t1 = (hi - origins) / safe_d  # [M, 3]
    t_min = torch.minimum(t0, t1)  # [M, 3]
    t_max = torch.maximum(t0, t1)  # [M, 3]
    # A ray parallel to a slab either spans it for all t (origin inside) or never enters it.
    inside = (origins >= lo) & (origins <= hi)  # [M, 3]
    inf = torch.full_like(t_min, float("inf"))
    t_min = torch.where(parallel, torch.where(inside, -inf, inf), t_min)
    t_max = torch.where(parallel, torch.where(inside, inf, -inf), t_max)
    t_near = t_min.amax(dim=-1).clamp_min(0.0)  # [M]
    t_far = t_max.amin(dim=-1)  # [M]
    return t_near, t_far


def camera_frustum_mask(
    points: torch.Tensor,
    c2w: torch.Tensor,
    fx: float,
    fy: float,
    cx: float,
    cy: float,
    width: int,
    height: int,
    near: float = 0.0,
) -> torch.Tensor:
    """[P] bool: the point lies in front of (depth > near) and projects inside the image of at
    least one camera. points: [P, 3]; c2w: [N, 4, 4] or [N, 3, 4] in the same frame."""
    if c2w.dim() != 3 or c2w.shape[1] not in (3, 4) or c2w.shape[2] != 4:
        raise ValueError(f"c2w must be [N, 4, 4] or [N, 3, 4], got {list(c2w.shape)}")
    rot_inv = torch.linalg.inv(c2w[:, :3, :3].to(points.dtype))  # [N, 3, 3]
    trans = c2w[:, :3, 3].to(points.dtype)  # [N, 3]
    seen = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)  # [P]
    for k in range(c2w.shape[0]):
        p_cam = (points - trans[k]) @ rot_inv[k].T  # [P, 3]
        depth = -p_cam[:, 2]  # [P], positive in front of an OpenGL camera
        front = depth > near
        safe = torch.where(front, depth, torch.ones_like(depth))
        u = cx + fx * p_cam[:, 0] / safe  # [P]
        v = cy - fy * p_cam[:, 1] / safe  # [P]
        inside = (u >= 0) & (u <= width) & (v >= 0) & (v <= height)
        seen |= front & inside
    return seen
