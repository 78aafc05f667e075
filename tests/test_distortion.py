"""Lens models and distorted camera rays, checked against OpenCV's own projection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nerfmine.ops.distortion import camera_rays, distort, undistort
from nerfmine.ops.rays import pixel_rays

W, H = 640, 480


def random_pose(gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A random rotation and translation as a [4, 4] camera-to-world matrix."""
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3] = q
    m[:3, 3] = torch.randn(3, generator=gen, dtype=torch.float64) * 2
    return m.to(dtype)


def random_coeffs(gen: np.random.Generator, model: str) -> np.ndarray:
    """Realistic (k1, k2, k3, k4, p1, p2)."""
    if model == "opencv":
        k1, k2, k3 = gen.uniform(-0.3, 0.3), gen.uniform(-0.1, 0.1), gen.uniform(-0.02, 0.02)
        p1, p2 = gen.uniform(-2e-3, 2e-3, size=2)
        return np.array([k1, k2, k3, 0.0, p1, p2])
    k = gen.uniform(-1.0, 1.0, size=4) * np.array([0.05, 0.01, 0.005, 0.001])
    return np.array([*k, 0.0, 0.0])


def opencv_pixels(model: str, pts_cv: np.ndarray, K: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Project camera-frame points [P, 3] (OpenCV axes) with OpenCV itself -> pixels [P, 2]."""
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless is the test oracle")
    rvec = np.zeros(3)
    tvec = np.zeros(3)
    if model == "opencv":
        dist = np.array([c[0], c[1], c[4], c[5], c[2]])  # OpenCV order k1, k2, p1, p2, k3
        uv, _ = cv2.projectPoints(pts_cv.reshape(-1, 1, 3), rvec, tvec, K, dist)
    else:
        dist = c[:4].reshape(4, 1)
        uv, _ = cv2.fisheye.projectPoints(pts_cv.reshape(-1, 1, 3), rvec, tvec, K, dist)
    return uv.reshape(-1, 2)


@pytest.mark.parametrize("model", ["opencv", "fisheye"])
def test_rays_pass_through_opencv_projected_points(model):
    pytest.importorskip("cv2", reason="opencv-python-headless is the test oracle")
    rng = np.random.default_rng(0 if model == "opencv" else 1)
    gen = torch.Generator().manual_seed(3)
    n_cams, per_cam = 4, 200
    c2w = torch.stack([random_pose(gen) for _ in range(n_cams)])  # [N, 4, 4]
    intr, dist, px, py, cam, world = [], [], [], [], [], []
    for k in range(n_cams):
        fx, fy = rng.uniform(400, 700), rng.uniform(400, 700)
        cx, cy = W / 2 + rng.uniform(-20, 20), H / 2 + rng.uniform(-20, 20)
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
        c = random_coeffs(rng, model)
        lim = 0.5 if model == "opencv" else 1.5  # |x/z|: about 27 deg / 56 deg off axis
        z = rng.uniform(0.5, 5.0, per_cam)
        pts_cv = np.stack(
            [rng.uniform(-lim, lim, per_cam) * z, rng.uniform(-lim, lim, per_cam) * z, z], -1
        )
        uv = opencv_pixels(model, pts_cv, K, c)
        # OpenCV camera axes -> OpenGL (flip y, z) -> world through the OpenGL pose.
        pts_gl = pts_cv * np.array([1.0, -1.0, -1.0])
        pose = c2w[k].numpy()
        world.append(pts_gl @ pose[:3, :3].T + pose[:3, 3])
        intr.append([fx, fy, cx, cy])
        dist.append(c)
        px.append(uv[:, 0])
        py.append(uv[:, 1])
        cam.append(np.full(per_cam, k))
    origins, dirs = camera_rays(
        c2w,
        torch.tensor(intr, dtype=torch.float64),
        torch.tensor(np.array(dist), dtype=torch.float64),
        model,
        torch.from_numpy(np.concatenate(px)),
        torch.from_numpy(np.concatenate(py)),
        torch.from_numpy(np.concatenate(cam)).long(),
    )
    to_pt = torch.from_numpy(np.concatenate(world)) - origins  # [M, 3]
    to_pt = to_pt / torch.linalg.vector_norm(to_pt, dim=-1, keepdim=True)
    cos = (to_pt * dirs).sum(-1).clamp(-1, 1)
    angle = torch.atan2(torch.linalg.vector_norm(torch.cross(to_pt, dirs, dim=-1), dim=-1), cos)
    assert angle.max().item() < 1e-5


@pytest.mark.parametrize("model", ["opencv", "fisheye"])
def test_undistort_inverts_distort(model):
    rng = np.random.default_rng(5)
    for _ in range(5):
        c = torch.tensor(random_coeffs(rng, model), dtype=torch.float64)
        lim = 0.6 if model == "opencv" else 1.5
        xy = torch.from_numpy(rng.uniform(-lim, lim, size=(500, 2)))
        back = undistort(distort(xy, c, model), c, model)
        assert (back - xy).abs().max().item() < 1e-6
    # per-point coefficients ([M, 6]) and float32 input
    cs = torch.tensor(
        np.stack([random_coeffs(rng, model) for _ in range(100)]), dtype=torch.float64
    )
    xy = torch.from_numpy(rng.uniform(-0.5, 0.5, size=(100, 2)))
    back = undistort(distort(xy, cs, model).float(), cs, model)
    assert back.dtype == torch.float32
    assert (back.double() - xy).abs().max().item() < 1e-6


def test_distort_matches_formula_at_known_point():
    c = torch.tensor([0.1, 0.01, 0.001, 0.0, 0.002, -0.003], dtype=torch.float64)
    x, y = 0.3, -0.2
    r2 = x * x + y * y
    radial = 1 + 0.1 * r2 + 0.01 * r2**2 + 0.001 * r2**3
    xd = x * radial + 2 * 0.002 * x * y + -0.003 * (r2 + 2 * x * x)
    yd = y * radial + 0.002 * (r2 + 2 * y * y) + 2 * -0.003 * x * y
    out = distort(torch.tensor([[x, y]], dtype=torch.float64), c, "opencv")
    assert torch.allclose(out, torch.tensor([[xd, yd]], dtype=torch.float64), atol=1e-15)
    fc = torch.tensor([0.1, 0.01, 0.001, 0.0001, 0.0, 0.0], dtype=torch.float64)
    th = math.atan(math.hypot(x, y))
    thd = th * (1 + 0.1 * th**2 + 0.01 * th**4 + 0.001 * th**6 + 0.0001 * th**8)
    s = thd / math.hypot(x, y)
    out = distort(torch.tensor([[x, y], [0.0, 0.0]], dtype=torch.float64), fc, "fisheye")
    assert torch.allclose(out, torch.tensor([[x * s, y * s], [0.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("model", ["pinhole", "opencv"])
def test_no_distortion_equals_pixel_rays_exactly(model):
    gen = torch.Generator().manual_seed(0)
    c2w = torch.stack([random_pose(gen, torch.float32) for _ in range(3)])
    fx, fy, cx, cy = 512.3, 498.7, 321.1, 239.4
    m = 1000
    px = torch.rand(m, generator=gen) * W
    py = torch.rand(m, generator=gen) * H
    cam = torch.randint(0, 3, (m,), generator=gen)
    ref_o, ref_d = pixel_rays(c2w, fx, fy, cx, cy, px, py, cam)
    intr = torch.tensor([[fx, fy, cx, cy]] * 3)
    o, d = camera_rays(c2w, intr, None, model, px, py, cam)
    assert torch.equal(o, ref_o) and torch.equal(d, ref_d)
    if model == "pinhole":  # a distortion tensor is ignored by the pinhole model
        o, d = camera_rays(c2w, intr, torch.full((3, 6), 0.1), model, px, py, cam)
        assert torch.equal(d, ref_d)
    else:  # zero coefficients: equal up to the float64 round trip (a zero-coefficient fisheye
        # is still the equidistant projection, not a pinhole)
        o, d = camera_rays(c2w, intr, torch.zeros(3, 6), model, px, py, cam)
        assert torch.allclose(d, ref_d, atol=1e-6)


def test_bad_model_is_rejected():
    with pytest.raises(ValueError, match="camera model"):
        distort(torch.zeros(1, 2), torch.zeros(6), "kannala")
