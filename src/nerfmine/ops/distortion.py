"""OpenCV lens models and camera rays for real captures (pure PyTorch, not differentiable).

Coefficients are always a 6-vector ``(k1, k2, k3, k4, p1, p2)`` (the layout of
``SceneData.distortion``), [6] for all points or [M, 6] per point:

- ``"opencv"`` (radial-tangential, OpenCV's default model with k1, k2, p1, p2, k3; k4 unused):
  r2 = x^2 + y^2, radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3,
  x_d = x radial + 2 p1 x y + p2 (r2 + 2 x^2), y_d = y radial + p1 (r2 + 2 y^2) + 2 p2 x y.
- ``"fisheye"`` (OpenCV's ``cv2.fisheye`` equidistant model with k1..k4; p1, p2 unused):
  r = |(x, y)|, theta = atan(r), theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 +
  k4 theta^8), (x_d, y_d) = (theta_d / r) (x, y).
- ``"pinhole"``: no distortion.

Normalized coordinates are OpenCV camera coordinates divided by depth: x right, y DOWN, the
camera looking down +z; pixel (px, py) has distorted normalized coordinates
``((px - cx) / fx, (py - cy) / fy)``. ``camera_rays`` undistorts them, turns the camera-space
direction ``(x, y, 1)`` into OpenGL camera axes ``(x, -y, -1)`` (flip y and z) and rotates it by
the OpenGL camera-to-world pose, like :func:`nerfmine.ops.rays.pixel_rays` (which it equals
exactly when there is no distortion). Pixel centres are at integer + 0.5 (docs/design.md); the
principal point (cx, cy) must be given in that convention (COLMAP, instant-ngp and nerfstudio
use it; an OpenCV calibration with integer pixel centres needs 0.5 added to cx and cy).
"""

from __future__ import annotations

import torch

MODELS = ("pinhole", "opencv", "fisheye")


def _check_model(model: str) -> str:
    if model not in MODELS:
        raise ValueError(f"camera model must be one of {MODELS}, got {model!r}")
    return model


def _split_coeffs(coeffs: torch.Tensor, like: torch.Tensor) -> list[torch.Tensor]:
    """The six coefficients as tensors that broadcast against ``like[:, 0]`` ([M] or [])."""
    c = torch.as_tensor(coeffs, dtype=like.dtype, device=like.device)
    if c.shape[-1] != 6 or c.dim() not in (1, 2):
        raise ValueError(
            f"coeffs must be [6] or [M, 6] (k1, k2, k3, k4, p1, p2), got {list(c.shape)}"
        )
    return list(c.unbind(-1))


def distort(xy: torch.Tensor, coeffs: torch.Tensor, model: str = "opencv") -> torch.Tensor:
    """Apply the lens model to undistorted normalized coordinates xy [M, 2] -> [M, 2]."""
    _check_model(model)
    if model == "pinhole":
        return xy.clone()
    k1, k2, k3, k4, p1, p2 = _split_coeffs(coeffs, xy)
    x, y = xy[:, 0], xy[:, 1]
    if model == "opencv":
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return torch.stack([xd, yd], dim=-1)
    r = torch.sqrt(x * x + y * y)  # [M]
    theta = torch.atan(r)
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    # theta_d / r -> 1 as r -> 0
    scale = torch.where(r > 1e-12, theta_d / torch.where(r > 1e-12, r, torch.ones_like(r)), 1.0)
    return xy * scale[:, None]


def undistort(
    xy_distorted: torch.Tensor, coeffs: torch.Tensor, model: str = "opencv", iterations: int = 20
) -> torch.Tensor:
    """Invert :func:`distort` by Newton's method: [M, 2] distorted -> [M, 2] undistorted.

    Computed in float64 and returned in the input dtype. Radial-tangential: 2-D Newton on
    distort(x) - x_d with the analytic Jacobian, starting at x_d (instant-ngp's
    iterative_camera_undistortion does the same). Fisheye: 1-D Newton for theta in
    theta_d(theta) = |x_d|, then r = tan(theta). Converges to < 1e-9 in a few steps for
    realistic coefficients (where the model is monotonic over the image).
    """
    _check_model(model)
    if model == "pinhole":
        return xy_distorted.clone()
    dtype = xy_distorted.dtype
    xd = xy_distorted.to(torch.float64)
    k1, k2, k3, k4, p1, p2 = _split_coeffs(coeffs, xd)
    if model == "opencv":
        tx, ty = xd[:, 0], xd[:, 1]
        x, y = tx.clone(), ty.clone()
        for _ in range(iterations):
            r2 = x * x + y * y
            radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
            dradial = k1 + r2 * (2 * k2 + 3 * k3 * r2)  # d radial / d r2
            fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - tx
            fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - ty
            a = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x  # d fx / dx
            b = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y  # d fx / dy = d fy / dx
            d = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x  # d fy / dy
            det = a * d - b * b
            det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
            x = x - (d * fx - b * fy) / det
            y = y - (a * fy - b * fx) / det
        return torch.stack([x, y], dim=-1).to(dtype)
    rd = torch.sqrt((xd * xd).sum(-1))  # [M]
    half_pi = torch.pi / 2
    theta = rd.clamp(max=half_pi)
    for _ in range(iterations):
        t2 = theta * theta
        f = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - rd
        df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
        df = torch.where(df.abs() < 1e-12, torch.full_like(df, 1e-12), df)
        theta = (theta - f / df).clamp(0.0, half_pi - 1e-6)
    safe_rd = torch.where(rd > 1e-12, rd, torch.ones_like(rd))
    scale = torch.where(rd > 1e-12, torch.tan(theta) / safe_rd, 1.0)  # r / r_d
    return (xd * scale[:, None]).to(dtype)


def camera_rays(
    c2w: torch.Tensor,
    intrinsics: torch.Tensor,
    distortion: torch.Tensor | None,
    model: str,
    px: torch.Tensor,
    py: torch.Tensor,
    cam_idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel positions ``(px, py)`` of cameras ``cam_idx``, lens distortion removed.

    c2w: [N, 4, 4] or [N, 3, 4] OpenGL camera-to-world; intrinsics: [N, 4] (fx, fy, cx, cy) in
    pixels; distortion: [N, 6] (k1, k2, k3, k4, p1, p2) or None; model: "pinhole" | "opencv" |
    "fisheye"; px, py: [M] float; cam_idx: [M] int64. ``distortion=None`` or ``model="pinhole"``
    gives the plain pinhole rays of ``pixel_rays`` (bit for bit); note that a fisheye with zero
    coefficients is still the equidistant projection, not a pinhole.
    Returns origins [M, 3] and unit directions [M, 3] in the frame of ``c2w``.
    """
    _check_model(model)
    _check_poses(c2w)
    if intrinsics.dim() != 2 or intrinsics.shape[1] != 4:
        raise ValueError(
            f"intrinsics must be [N, 4] (fx, fy, cx, cy), got {list(intrinsics.shape)}"
        )
    dtype = px.dtype if px.is_floating_point() else c2w.dtype
    px, py = px.to(dtype), py.to(dtype)
    k = intrinsics.to(device=px.device, dtype=dtype)[cam_idx]  # [M, 4]
    x, y = _normalized(px, py, k)
    if model != "pinhole" and distortion is not None:
        coeffs = distortion.to(device=px.device)[cam_idx]  # [M, 6]
        xy = undistort(torch.stack([x, y], dim=-1), coeffs, model)  # [M, 2]
        x, y = xy[:, 0], xy[:, 1]
    return rays_from_normalized(c2w, x, y, cam_idx)


def _check_poses(c2w: torch.Tensor) -> None:
    if c2w.dim() != 3 or c2w.shape[1] not in (3, 4) or c2w.shape[2] != 4:
        raise ValueError(f"c2w must be [N, 4, 4] or [N, 3, 4], got {list(c2w.shape)}")


def _normalized(
    px: torch.Tensor, py: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distorted normalized coordinates ((px - cx) / fx, (py - cy) / fy), k [M|1, 4]."""
    fx, fy, cx, cy = k.unbind(-1)
    return (px - cx) / fx, (py - cy) / fy  # OpenCV normalized, y down


def rays_from_normalized(
    c2w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cam_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays of cameras ``cam_idx`` [M] through undistorted normalized coordinates x, y [M]:
    origins [M, 3] and unit directions [M, 3] in the frame of ``c2w`` [N, 3|4, 4]."""
    _check_poses(c2w)
    pose = c2w[cam_idx]  # [M, 3|4, 4]
    rot = pose[:, :3, :3]  # [M, 3, 3]
    origins = pose[:, :3, 3]  # [M, 3]
    # OpenCV camera (x, y, 1) -> OpenGL camera (x, -y, -1)
    d_cam = torch.stack([x, -y, -torch.ones_like(x)], dim=-1).to(c2w.dtype)  # [M, 3]
    d_world = torch.einsum("mij,mj->mi", rot, d_cam)  # [M, 3]
    directions = d_world / torch.linalg.vector_norm(d_world, dim=-1, keepdim=True)
    return origins.contiguous(), directions


def undistorted_pixel_centres(
    intrinsics: torch.Tensor,
    coeffs: torch.Tensor,
    model: str,
    width: int,
    height: int,
    rows_per_chunk: int = 256,
) -> torch.Tensor:
    """Undistorted normalized coordinates of every pixel centre of one lens: [H, W, 2] float32.

    intrinsics: [4] float32 (fx, fy, cx, cy); coeffs: [6]. Each entry is what
    :func:`camera_rays` computes for the pixel centre ``(col + 0.5, row + 0.5)`` (the same
    float32 normalization and float64 Newton inversion, element by element, so equal bit for
    bit on one device). A table of these turns the ~20 Newton iterations of every training
    step (hundreds of small float64 kernels) into one gather. Rows are inverted
    ``rows_per_chunk`` at a time to bound the float64 temporaries of large images.
    """
    _check_model(model)
    device = intrinsics.device
    k = intrinsics.reshape(1, 4).float()  # [1, 4]
    cols = torch.arange(width, device=device).float() + 0.5  # [W]
    table = torch.empty(height, width, 2, dtype=torch.float32, device=device)
    for start in range(0, height, rows_per_chunk):
        rows = torch.arange(start, min(start + rows_per_chunk, height), device=device)
        py = (rows.float() + 0.5)[:, None].expand(-1, width).reshape(-1)  # [h*W]
        px = cols[None, :].expand(rows.numel(), -1).reshape(-1)  # [h*W]
        x, y = _normalized(px, py, k)
        xy = undistort(torch.stack([x, y], dim=-1), coeffs.to(device), model)  # [h*W, 2]
        table[start:start + rows.numel()] = xy.reshape(rows.numel(), width, 2)
    return table
