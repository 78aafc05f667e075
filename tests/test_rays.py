"""Camera rays, ray/box intersection and frustum masks against hand-worked geometry."""

from __future__ import annotations

import math

import pytest
import torch

from nerfmine.ops.rays import camera_frustum_mask, image_rays, pixel_rays, ray_aabb

W, H = 8, 6
ANGLE_X = 0.7
FX = 0.5 * W / math.tan(0.5 * ANGLE_X)
CX, CY = W / 2, H / 2


def pose(rot: torch.Tensor, pos: tuple[float, float, float]) -> torch.Tensor:
    c2w = torch.eye(4)  # [4, 4]
    c2w[:3, :3] = rot
    c2w[:3, 3] = torch.tensor(pos)
    return c2w


def rot_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rays_at(c2w: torch.Tensor, px: list[float], py: list[float], cams: list[int] | None = None):
    cam_idx = torch.tensor(cams if cams is not None else [0] * len(px), dtype=torch.int64)
    c2w = c2w if c2w.dim() == 3 else c2w[None]
    return pixel_rays(c2w, FX, FX, CX, CY, torch.tensor(px), torch.tensor(py), cam_idx)


def test_centre_ray_of_identity_camera_looks_down_minus_z():
    o, d = rays_at(pose(torch.eye(3), (1.0, 2.0, 3.0)), [CX], [CY])
    assert torch.allclose(o, torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.allclose(d, torch.tensor([[0.0, 0.0, -1.0]]))


def test_edge_rays_match_field_of_view():
    c2w = pose(torch.eye(3), (0.0, 0.0, 0.0))
    # left and right image edges at the middle row: angle to the axis is half of camera_angle_x
    _, d = rays_at(c2w, [0.0, float(W)], [CY, CY])
    for k, sign in ((0, -1.0), (1, 1.0)):
        assert d[k, 1].abs() < 1e-7
        assert math.copysign(1.0, d[k, 0].item()) == sign
        assert math.atan2(abs(d[k, 0].item()), -d[k, 2].item()) == pytest.approx(0.5 * ANGLE_X)
    # image corner (0, 0) is up-left: x < 0, y > 0, with exact tangent ratios
    _, d = rays_at(c2w, [0.0], [0.0])
    tx, ty = d[0, 0] / -d[0, 2], d[0, 1] / -d[0, 2]
    assert tx.item() == pytest.approx(-math.tan(0.5 * ANGLE_X), rel=1e-6)
    assert ty.item() == pytest.approx((H / W) * math.tan(0.5 * ANGLE_X), rel=1e-6)
    assert torch.allclose(d.norm(dim=-1), torch.ones(1))


def test_rotated_camera():
    # 90 degrees about +y: the camera's -z (view) becomes world -x, its +x (right) world -z.
    c2w = pose(rot_y(math.pi / 2), (5.0, 0.0, 0.0))
    o, d = rays_at(c2w, [CX, CX + FX], [CY, CY])
    assert torch.allclose(o, torch.tensor([[5.0, 0.0, 0.0]] * 2))
    assert torch.allclose(d[0], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)
    s = 1 / math.sqrt(2)
    assert torch.allclose(d[1], torch.tensor([-s, 0.0, -s]), atol=1e-6)


def test_general_rotation_and_camera_selection():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    c2w = torch.stack([pose(torch.eye(3), (0.0, 0.0, 1.0)), pose(q, (0.1, 0.2, 0.3))])  # [2,4,4]
    px, py = [1.25, 6.5, 3.0], [2.0, 0.5, 5.75]
    o, d = rays_at(c2w, px, py, [1, 0, 1])
    for k, cam in enumerate([1, 0, 1]):
        d_cam = torch.tensor([(px[k] - CX) / FX, -(py[k] - CY) / FX, -1.0])
        want = c2w[cam, :3, :3] @ d_cam
        assert torch.allclose(d[k], want / want.norm(), atol=1e-6)
        assert torch.allclose(o[k], c2w[cam, :3, 3])
    # [N, 3, 4] poses give the same rays
    o34, d34 = rays_at(c2w[:, :3, :], px, py, [1, 0, 1])
    assert torch.equal(o34, o) and torch.equal(d34, d)


def test_image_rays_are_row_major_pixel_centres():
    c2w = pose(rot_y(0.3), (0.5, -1.0, 2.0))
    o, d = image_rays(c2w, FX, FX, CX, CY, W, H)
    assert o.shape == (H * W, 3) and d.shape == (H * W, 3)
    row, col = 4, 2
    _, want = rays_at(c2w, [col + 0.5], [row + 0.5])
    assert torch.allclose(d[row * W + col], want[0])
    assert torch.allclose(o, c2w[:3, 3].expand(H * W, 3))
    # top-left pixel points up-left in camera space, bottom-right down-right
    d_cam = d @ c2w[:3, :3]  # rotate back: R^T d
    assert d_cam[0, 0] < 0 and d_cam[0, 1] > 0
    assert d_cam[-1, 0] > 0 and d_cam[-1, 1] < 0


def test_ray_aabb_hand_cases():
    s3 = math.sqrt(3.0)
    origins = torch.tensor(
        [
            [-1.0, 0.5, 0.5],  # enters at x=0, leaves at x=1
            [2.0, 0.5, 0.5],  # same, going -x
            [0.5, 0.5, 0.5],  # inside the box
            [-1.0, 2.0, 0.5],  # passes above: miss
            [2.0, 0.5, 0.5],  # box behind the ray: miss
            [-1.0, -1.0, -1.0],  # along the diagonal
            [0.5, 1.5, 0.5],  # parallel to the x slab but outside y: miss
        ]
    )
    dirs = torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [1.0, 0.0, 0.0],
            [1 / s3, 1 / s3, 1 / s3],
            [1.0, 0.0, 0.0],
        ]
    )
    t_near, t_far = ray_aabb(origins, dirs)
    hit = t_far >= t_near
    assert hit.tolist() == [True, True, True, False, False, True, False]
    assert t_near[:3].tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert t_far[:3].tolist() == pytest.approx([2.0, 2.0, 0.5])
    assert t_near[5].item() == pytest.approx(s3, rel=1e-6)
    assert t_far[5].item() == pytest.approx(2 * s3, rel=1e-6)
    assert (t_near >= 0).all()


def test_ray_aabb_custom_box_and_oblique_inside():
    o = torch.tensor([[0.0, 0.0, 0.0], [-3.0, 0.0, 0.0]])
    d = torch.tensor([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0]])
    t_near, t_far = ray_aabb(o, d, aabb_min=(-1.0, -2.0, -1.0), aabb_max=(2.0, 2.0, 1.0))
    # ray 0 starts inside and leaves through y=2 at t=2.5 (x=1.5 < 2)
    assert t_near.tolist() == pytest.approx([0.0, 2.0])
    assert t_far.tolist() == pytest.approx([2.5, 5.0])


def frustum(points, c2w, width=W, height=H, near=0.0):
    return camera_frustum_mask(
        torch.tensor(points), c2w, FX, FX, width / 2, height / 2, width, height, near
    )


def test_frustum_mask_front_behind_outside():
    c2w = pose(torch.eye(3), (0.0, 0.0, 3.0))[None]  # [1, 4, 4]
    tx = math.tan(0.5 * ANGLE_X)  # half-width / depth at the image edge
    ty = tx * H / W
    pts = [
        [0.0, 0.0, 0.0],  # straight ahead
        [0.0, 0.0, 5.0],  # behind
        [10.0, 0.0, 0.0],  # far off to the side
        [3 * tx * 0.99, 0.0, 0.0],  # just inside the right edge
        [3 * tx * 1.01, 0.0, 0.0],  # just outside it
        [0.0, 3 * ty * 0.99, 0.0],  # just inside the top edge
        [0.0, 3 * ty * 1.01, 0.0],  # just outside it (narrower vertically)
        [0.0, -3 * ty * 1.01, 0.0],  # just outside the bottom edge
    ]
    assert frustum(pts, c2w).tolist() == [True, False, False, True, False, True, False, False]
    # a near plane drops points too close to the camera
    assert frustum([[0.0, 0.0, 2.5], [0.0, 0.0, 1.0]], c2w, near=1.0).tolist() == [False, True]


def test_frustum_mask_any_camera_counts():
    front = pose(torch.eye(3), (0.0, 0.0, 3.0))
    back = pose(rot_y(math.pi), (0.0, 0.0, -3.0))  # looks down +z
    pts = [[0.0, 0.0, 5.0], [0.0, 0.0, -5.0], [0.0, 0.0, 0.0], [0.0, 20.0, 0.0]]
    assert frustum(pts, front[None]).tolist() == [False, True, True, False]
    assert frustum(pts, back[None]).tolist() == [True, False, True, False]
    assert frustum(pts, torch.stack([front, back])).tolist() == [True, True, True, False]


def test_frustum_mask_agrees_with_rays():
    c2w = pose(rot_y(0.8), (1.0, 0.5, -2.0))
    o, d = image_rays(c2w, FX, FX, CX, CY, W, H)
    pts = o + 2.0 * d  # points on every pixel-centre ray
    assert frustum(pts.tolist(), c2w[None]).all()
    behind = o - 2.0 * d
    assert not frustum(behind.tolist(), c2w[None]).any()
