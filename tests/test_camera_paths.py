"""Camera paths: look_at, orbit/spiral/interpolation, slerp and the camera-path JSON files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from nerfmine import camera_paths as cp
from nerfmine.errors import NerfmineError


def _forward(c2w: torch.Tensor) -> torch.Tensor:
    return -c2w[..., :3, 2]


def _assert_rotation(rot: torch.Tensor, atol: float = 1e-5) -> None:
    rot = rot.double()
    assert torch.allclose(rot.T @ rot, torch.eye(3, dtype=torch.float64), atol=atol)
    assert abs(torch.linalg.det(rot).item() - 1.0) < atol


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return cp.quaternion_to_rotation(q / np.linalg.norm(q))


def test_look_at_points_minus_z_at_target():
    eye, target = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.2, 0.3, -0.4])
    c2w = cp.look_at(eye, target, up=(0, 0, 1))
    assert c2w.shape == (4, 4) and c2w.dtype == torch.float32
    want = (target - eye) / torch.linalg.norm(target - eye)
    assert torch.allclose(_forward(c2w), want, atol=1e-6)
    assert torch.allclose(c2w[:3, 3], eye)
    assert torch.allclose(c2w[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    _assert_rotation(c2w[:3, :3])
    assert c2w[2, 1] > 0  # camera +y leans towards world up


def test_look_at_rejects_parallel_up():
    with pytest.raises(NerfmineError, match="parallel to up"):
        cp.look_at((0, 0, 3), (0, 0, 0), (0, 0, 1))


@pytest.mark.parametrize("up", [(0, 0, 1), (0, 1, 0), (0.3, -0.2, 0.9)])
def test_orbit_looks_at_centre_at_radius(up):
    center = torch.tensor([0.1, -0.2, 0.3])
    radius, height = 2.5, 1.2
    poses = cp.orbit_path(center, radius, height, 16, up=up)
    assert poses.shape == (16, 4, 4)
    up_t = torch.tensor(up, dtype=torch.float64)
    up_t = up_t / up_t.norm()
    for pose in poses.double():
        to_center = center.double() - pose[:3, 3]
        assert torch.allclose(_forward(pose), to_center / to_center.norm(), atol=1e-5)
        rel = pose[:3, 3] - center.double()
        h = rel @ up_t
        assert abs(h.item() - height) < 1e-5
        assert abs((rel - h * up_t).norm().item() - radius) < 1e-5
        _assert_rotation(pose[:3, :3])
    # distinct angles, no repeated end frame
    assert torch.cdist(poses[:, :3, 3], poses[:, :3, 3]).add(torch.eye(16) * 9).min() > 0.1


def test_spiral_looks_at_centre():
    poses = cp.spiral_path((0, 0, 0), 3.0, 0.5, 24, n_turns=2, height=1.0)
    assert poses.shape == (24, 4, 4)
    heights = poses[:, 2, 3]
    assert heights.max() > 1.4 and heights.min() < 0.6
    for pose in poses:
        assert torch.allclose(_forward(pose), -pose[:3, 3] / pose[:3, 3].norm(), atol=1e-5)


def test_slerp_gives_a_rotation_and_hits_ends():
    rng = np.random.default_rng(0)
    for _ in range(10):
        r0, r1 = _random_rotation(rng), _random_rotation(rng)
        for t in (0.0, 0.3, 0.5, 0.9, 1.0):
            _assert_rotation(cp.slerp_rotation(r0, r1, t))
        assert np.allclose(cp.slerp_rotation(r0, r1, 0.0).double().numpy(), r0, atol=1e-6)
        assert np.allclose(cp.slerp_rotation(r0, r1, 1.0).double().numpy(), r1, atol=1e-6)


def test_slerp_halfway_about_one_axis():
    r0 = np.eye(3)
    a = math.radians(80)
    r1 = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    mid = cp.slerp_rotation(r0, r1, 0.5).double().numpy()
    h = a / 2
    want = np.array([[math.cos(h), -math.sin(h), 0], [math.sin(h), math.cos(h), 0], [0, 0, 1]])
    assert np.allclose(mid, want, atol=1e-6)


def test_quaternion_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        r = _random_rotation(rng)
        assert np.allclose(cp.quaternion_to_rotation(cp.rotation_to_quaternion(r)), r, atol=1e-9)


def test_interpolate_passes_through_keys():
    keys = torch.stack([cp.look_at((3 * math.cos(a), 3 * math.sin(a), 1.0 + 0.3 * k), (0, 0, 0))
                        for k, a in enumerate([0.0, 0.7, 1.9, 2.5])])
    n = 20
    path = cp.interpolate_path(keys, n)
    assert path.shape == (n, 4, 4)
    frames = cp.key_frame_indices(len(keys), n)
    assert frames[0] == 0 and frames[-1] == n - 1
    for k, f in enumerate(frames):
        assert torch.allclose(path[f], keys[k], atol=1e-5), (k, f)
    for pose in path:
        _assert_rotation(pose[:3, :3])
        assert torch.allclose(pose[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_default_params_from_cameras():
    poses = cp.orbit_path((0, 0, 0), 4.0, 1.5, 10)
    params = cp.default_path_params(poses)
    assert np.allclose(params.up, [0, 0, 1], atol=0.2)  # cameras' +y tilts inwards; mean ~ up
    assert abs(params.radius - 4.0) < 1e-6 and abs(params.height - 1.5) < 1e-6
    # cameras at mixed heights: the orbit keeps their mean distance to the centre
    mixed = torch.cat([cp.orbit_path((0, 0, 0), 3.0, 0.5, 5),
                       cp.orbit_path((0, 0, 0), 2.0, 2.5, 5)])
    params = cp.default_path_params(mixed)
    mean_dist = torch.linalg.norm(mixed[:, :3, 3].double(), dim=-1).mean().item()
    orbit = cp.orbit_path(params.center, params.radius, params.height, 4, up=params.up)
    assert np.allclose(torch.linalg.norm(orbit[:, :3, 3].double(), dim=-1), mean_dist, atol=1e-5)


def _path(n=3) -> cp.CameraPath:
    c2w = cp.orbit_path((0, 0, 0), 2.0, 0.5, n)
    return cp.CameraPath(c2w=c2w, fov_y=torch.linspace(30, 50, n), width=40, height=30, fps=24)


def test_nerfmine_json_round_trip(tmp_path):
    path = _path()
    file = cp.write_camera_path(tmp_path / "p.json", path)
    doc = json.loads(file.read_text())
    assert set(doc) == {"width", "height", "fps", "frames"}
    assert set(doc["frames"][0]) == {"c2w", "fov_y"}
    back = cp.read_camera_path(file)
    assert torch.equal(back.c2w, path.c2w)
    assert torch.equal(back.fov_y, path.fov_y)
    assert (back.width, back.height, back.fps) == (40, 30, 24.0)


def test_nerfmine_json_with_fx(tmp_path):
    file = tmp_path / "fx.json"
    file.write_text(json.dumps({"width": 20, "height": 10, "frames": [
        {"c2w": np.eye(4).tolist(), "fx": 5.0}]}))
    got = cp.read_camera_path(file)
    assert got.fps == cp.DEFAULT_FPS
    assert abs(got.focal(0) - 5.0) < 1e-4


def test_nerfstudio_json(tmp_path):
    c2w = cp.orbit_path((0, 0, 0), 2.0, 0.5, 2)
    doc = {
        "camera_type": "perspective", "render_height": 48, "render_width": 64, "fps": 24,
        "seconds": 2,
        "camera_path": [
            {"camera_to_world": c2w[0].reshape(-1).tolist(), "fov": 50, "aspect": 4 / 3},
            {"camera_to_world": c2w[1].tolist(), "fov": 40, "aspect": 4 / 3},
        ],
    }
    file = tmp_path / "ns.json"
    file.write_text(json.dumps(doc))
    got = cp.read_camera_path(file)
    assert (got.width, got.height, got.fps, len(got)) == (64, 48, 24.0, 2)
    assert torch.allclose(got.c2w, c2w)
    assert torch.allclose(got.fov_y, torch.tensor([50.0, 40.0]))
    del doc["fps"]
    file.write_text(json.dumps(doc))
    assert cp.read_camera_path(file).fps == 1.0  # 2 frames over 2 seconds


def _frame(**kw):
    return {"c2w": np.eye(4).tolist(), "fov_y": 40.0} | kw


@pytest.mark.parametrize("doc, field", [
    ("{not json", "not valid JSON"),
    ([1, 2], "JSON object"),
    ({"width": 8, "height": 8}, "'frames'"),
    ({"height": 8, "frames": [_frame()]}, "'width'"),
    ({"width": 8, "frames": [_frame()]}, "'height'"),
    ({"width": 0, "height": 8, "frames": [_frame()]}, "'width'"),
    ({"width": 8, "height": 8, "fps": 0, "frames": [_frame()]}, "'fps'"),
    ({"width": 8, "height": 8, "fps": -3, "frames": [_frame()]}, "'fps'"),
    ({"width": 8, "height": 8, "frames": []}, "'frames' is empty"),
    ({"width": 8, "height": 8, "frames": [{"fov_y": 40}]}, "frames\\[0\\]: missing key 'c2w'"),
    ({"width": 8, "height": 8, "frames": [_frame(c2w=np.eye(3).tolist())]},
     "frames\\[0\\].c2w has shape \\[3, 3\\]"),
    ({"width": 8, "height": 8, "frames": [_frame(), _frame(c2w=[[float("nan")] * 4] * 4)]},
     "frames\\[1\\].c2w holds NaN or inf"),
    ({"width": 8, "height": 8, "frames": [_frame(c2w=[[1e400] * 4] * 4)]}, "NaN or inf"),
    ({"width": 8, "height": 8, "frames": [{"c2w": np.eye(4).tolist()}]}, "'fov_y'"),
    ({"width": 8, "height": 8, "frames": [_frame(fov_y=190)]}, "frames\\[0\\].fov_y"),
    ({"render_width": 8, "render_height": 8, "fps": 30, "camera_path": []}, "'camera_path'"),
    ({"render_width": 8, "fps": 30, "camera_path": [{}]}, "'render_height'"),
    ({"render_width": 8, "render_height": 8, "camera_path": [{"fov": 40}]}, "'fps'"),
    ({"render_width": 8, "render_height": 8, "fps": 30, "camera_path": [{"fov": 40}]},
     "camera_path\\[0\\]: missing key 'camera_to_world'"),
    ({"render_width": 8, "render_height": 8, "fps": 30,
      "camera_path": [{"camera_to_world": [0.0] * 12, "fov": 40}]},
     "camera_to_world has shape \\[12\\]"),
    ({"render_width": 8, "render_height": 8, "fps": 30,
      "camera_path": [{"camera_to_world": np.eye(4).reshape(-1).tolist()}]}, "'fov'"),
    ({"render_width": 8, "render_height": 8, "fps": 30, "camera_type": "fisheye",
      "camera_path": [{"camera_to_world": np.eye(4).reshape(-1).tolist(), "fov": 40}]},
     "fisheye"),
    ({"something": 1}, "'frames'"),
])
def test_bad_camera_path_files(tmp_path, doc, field):
    file = tmp_path / "bad.json"
    text = doc if isinstance(doc, str) else json.dumps(doc)
    file.write_text(text.replace("Infinity", "1e400"))
    with pytest.raises(NerfmineError, match=field) as info:
        cp.read_camera_path(file)
    assert str(file) in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(NerfmineError, match="not found") as info:
        cp.read_camera_path(tmp_path / "nope.json")
    assert "nope.json" in str(info.value)


def test_write_rejects_bad_paths(tmp_path):
    good = _path()
    with pytest.raises(NerfmineError, match="'frames' is empty"):
        cp.write_camera_path(tmp_path / "a.json", cp.CameraPath(
            c2w=torch.zeros(0, 4, 4), fov_y=torch.zeros(0), width=8, height=8))
    with pytest.raises(NerfmineError, match="'fps'"):
        cp.write_camera_path(tmp_path / "a.json", cp.CameraPath(
            c2w=good.c2w, fov_y=good.fov_y, width=8, height=8, fps=0))
    bad = good.c2w.clone()
    bad[1, 0, 0] = float("inf")
    with pytest.raises(NerfmineError, match="frames\\[1\\].c2w holds NaN or inf"):
        cp.write_camera_path(tmp_path / "a.json", cp.CameraPath(
            c2w=bad, fov_y=good.fov_y, width=8, height=8))
