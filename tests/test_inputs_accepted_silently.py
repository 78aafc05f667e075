"""Inputs that loaded (or validated) silently and went wrong later: each is now a DataError /
ConfigError naming the file, the field or frame and the fix, or a note in SceneData.notes where
real data can look like this (the robustness issue's six cases)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_transforms import NGP, H, W, write_capture

from nerfmine import camera_paths as cp
from nerfmine.config import PRESETS, config_from_dict, make_config
from nerfmine.data import load_scene
from nerfmine.data.files import rotation_deviation
from nerfmine.errors import ConfigError, DataError, NerfmineError

SHEAR = np.array([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # 10% shear
UNEVEN = np.diag([1.0, 1.0, 1.2])  # one axis 20% longer


def _rewrite_poses(path, poses: dict[int, np.ndarray]) -> None:
    """Replace the transform_matrix of the frames ``poses`` names in the transforms file."""
    meta = json.loads(path.read_text())
    for i, m in poses.items():
        meta["frames"][i]["transform_matrix"] = np.asarray(m, dtype=np.float64).tolist()
    path.write_text(json.dumps(meta))


def _pose(rot: np.ndarray, t) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rot, t
    return m


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _is_rotation(c2w: torch.Tensor, atol: float = 1e-6) -> bool:
    rot = c2w[..., :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(rot)
    return bool(torch.allclose(rot.transpose(-1, -2) @ rot, eye, atol=atol))


def _write_blender(root, poses: list[np.ndarray], alpha=255, split="train") -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    frames = []
    for i, m in enumerate(poses):
        pixels = np.full((H, W, 4), 100, dtype=np.uint8)
        pixels[..., 3] = alpha if np.isscalar(alpha) else alpha[i]
        Image.fromarray(pixels, "RGBA").save(root / split / f"r_{i}.png")
        frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": m.tolist()})
    (root / f"transforms_{split}.json").write_text(
        json.dumps({"camera_angle_x": 0.69, "frames": frames}))


def _write_llff(root, c2w: list[np.ndarray]) -> None:
    """poses_bounds.npy (LLFF's down, right, back columns) for OpenGL poses ``c2w`` and
    images/IMG_k.png."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i, m in enumerate(c2w):
        drb = np.stack([-m[:3, 1], m[:3, 0], m[:3, 2]], axis=1)
        mat = np.concatenate([drb, m[:3, 3:4], np.array([[H], [W], [9.0]])], axis=1)
        rows.append(np.concatenate([mat.reshape(-1), [0.5, 6.0]]))
        Image.fromarray(np.full((H, W, 3), 10 * i, dtype=np.uint8)).save(
            root / "images" / f"IMG_{i:03d}.png")
    np.save(root / "poses_bounds.npy", np.stack(rows))


def _circle(n: int, radius: float = 2.0, centre=(0.0, 0.0, 0.0)) -> list[np.ndarray]:
    """Cameras on a circle around ``centre``, each turned about z (rotations exact)."""
    return [_pose(_rotation_z(2 * math.pi * k / n),
                  np.asarray(centre) + radius * np.array([math.cos(2 * math.pi * k / n),
                                                          math.sin(2 * math.pi * k / n), 0.3]))
            for k in range(n)]


# ----------------------------------------------------------------------- 1. not a rotation
@pytest.mark.parametrize("bad, what", [(SHEAR, "shear"), (UNEVEN, "uneven scale")])
def test_sheared_or_unevenly_scaled_pose_is_refused(tmp_path, bad, what):
    path = write_capture(tmp_path, NGP, 6)
    _rewrite_poses(path, {3: _pose(bad, [0.3, 0.0, 2.0])})
    for split in ("train", "test"):  # a bad frame is reported whatever the split
        with pytest.raises(DataError) as info:
            load_scene(path, split)
        message = str(info.value)
        assert str(path) in message and "frames[3] ('images/0003.png')" in message
        assert "sheared or scaled unevenly" in message and "columns of lengths" in message
        assert "nearest rotation" in message  # the fix


def test_blender_and_llff_refuse_a_sheared_pose(tmp_path):
    poses = _circle(4)
    poses[2] = _pose(poses[2][:3, :3] @ SHEAR, poses[2][:3, 3])
    _write_blender(tmp_path / "blender", poses)
    with pytest.raises(DataError, match=r"frames\[2\] \('\./train/r_2'\) transform_matrix is "
                                        "not a rotation"):
        load_scene(tmp_path / "blender", "train")
    _write_llff(tmp_path / "llff", poses)
    with pytest.raises(DataError, match=r"poses_bounds.npy: row 2 \(pose of IMG_002.png\) is "
                                        "not a rotation"):
        load_scene(tmp_path / "llff", "all")


def test_rotation_drift_is_corrected_silently(tmp_path):
    path = write_capture(tmp_path, NGP, 6)
    rng = np.random.default_rng(1)
    drift = {i: _pose(np.eye(3) + 1e-4 * rng.normal(size=(3, 3)), [0.1 * i, 0.0, 2.0])
             for i in range(6)}
    _rewrite_poses(path, drift)
    scene = load_scene(path, "all")
    assert _is_rotation(scene.c2w)
    assert scene.notes == []
    # the translations are kept as given
    assert torch.allclose(scene.c2w[:, :3, 3], torch.tensor(
        [[0.1 * i, 0.0, 2.0] for i in range(6)], dtype=torch.float32))


def test_rounding_beyond_drift_and_uniform_scale_are_corrected_with_a_note(tmp_path):
    path = write_capture(tmp_path, NGP, 6)
    rounded = np.round(_rotation_z(0.3) @ np.diag([1.0, 1.004, 1.0]), 3)  # ~0.4%
    _rewrite_poses(path, {1: _pose(rounded, [0.1, 0.0, 2.0]),
                          2: _pose(2.0 * _rotation_z(0.5), [0.2, 0.0, 2.0])})
    scene = load_scene(path, "all")
    assert _is_rotation(scene.c2w)
    # the nearest rotation, and the uniformly scaled pose's rotation without its scale
    assert rotation_deviation(rounded)[0] > 1e-3
    assert torch.allclose(scene.c2w[2, :3, :3].double(), torch.from_numpy(_rotation_z(0.5)),
                          atol=1e-6)
    notes = " ".join(scene.notes)
    assert "sheared or scaled unevenly by up to" in notes and "frames[1]" in notes
    assert "scaled uniformly by 2" in notes and "frames[2]" in notes
    assert str(path) in notes


def test_uniformly_scaled_pose_keeps_its_rays(tmp_path):
    """Ray directions are normalised: removing a uniform scale changes no ray."""
    path = write_capture(tmp_path, NGP, 3)
    unit = load_scene(path, "all").cameras()
    _rewrite_poses(path, {i: _pose(3.0 * np.eye(3), [0.1 * i, 0.0, 2.0]) for i in range(3)})
    scaled = load_scene(path, "all").cameras()
    px, py = torch.tensor([0.5, 3.5, 7.5]), torch.tensor([0.5, 2.5, 5.5])
    cam = torch.tensor([0, 1, 2])
    for a, b in zip(unit.rays(px, py, cam), scaled.rays(px, py, cam)):
        assert torch.allclose(a, b, atol=1e-6)


# ----------------------------------------------------------------------- 2. huge translations
def test_translation_far_beyond_the_unit_cube_is_refused(tmp_path):
    path = write_capture(tmp_path, NGP, 6)
    _rewrite_poses(path, {4: _pose(np.eye(3), [1e30, 0.0, 2.0])})
    with pytest.raises(DataError) as info:
        load_scene(path, "train")
    message = str(info.value)
    assert str(path) in message and "frames[4] ('images/0004.png')" in message
    assert "unit cube" in message and "1 of 6 cameras are that far" in message
    assert "remove their frames" in message  # only that camera is far


def test_every_camera_beyond_the_unit_cube_gets_a_scale_to_use(tmp_path):
    """World units of kilometres' worth of metres with instant-ngp's default scale 0.33."""
    path = write_capture(tmp_path, NGP, 4)
    _rewrite_poses(path, {i: _pose(np.eye(3), [1e5 + 10 * i, 2e5, 0.0]) for i in range(4)})
    with pytest.raises(DataError) as info:
        load_scene(path, "all")
    message = str(info.value)
    assert "frames[0]" in message and "so do all 4 cameras" in message
    assert "Give 'scale' and 'offset' in the file" in message
    assert "scale 0.022 and offset (-2200, -4400, 0.5)" in message  # 0.33 / 15, centring


def test_scale_that_overflows_float32_is_refused(tmp_path):
    """scale 1e38 times a translation of 10 is inf in float32 (Cameras.transformed)."""
    path = write_capture(tmp_path, {**NGP, "scale": 1e38}, 4)
    with pytest.raises(DataError, match=r"transforms.json: the camera of frames\[0\]"):
        load_scene(path, "all")


def test_blender_translation_beyond_the_cube_is_refused(tmp_path):
    poses = _circle(3)
    poses[1][:3, 3] = [3e38, -3e38, 1.0]
    _write_blender(tmp_path, poses)
    with pytest.raises(DataError, match=r"transforms_train.json: the camera of frames\[1\]"):
        load_scene(tmp_path, "train")


def test_large_world_coordinates_that_float32_cannot_place_are_refused(tmp_path):
    """nerfstudio poses 1e7 from the origin, 1 apart: the centring (in float32) puts the
    cameras up to a sixth of the cube from where they are; it was silent."""
    path = write_capture(tmp_path, {"camera_model": "OPENCV", **NGP}, 6)
    _rewrite_poses(path, {i: _pose(np.eye(3), [1e7 + 0.37 * i, 2e7, 0.21 * i])
                          for i in range(6)})
    with pytest.raises(DataError) as info:
        load_scene(path, "all")
    message = str(info.value)
    assert str(path) in message and "lose precision in float32" in message
    assert "subtract a common origin" in message


@pytest.mark.parametrize("centre", [(0.0, 0.0, 0.0), (1e30, -1e30, 3e37)])
def test_llff_normalises_huge_translations_without_overflow(tmp_path, centre):
    poses = _circle(5, radius=1e29, centre=centre)
    _write_llff(tmp_path, poses)
    scene = load_scene(tmp_path, "all")
    c2w = scene.c2w.double()
    assert torch.isfinite(c2w).all()
    assert c2w[:, :3, 3].norm(dim=1).max() <= 1.0 + 1e-5  # within radius 1
    unit = scene.cameras().transformed(scene.scale, scene.offset)
    assert torch.isfinite(unit.c2w).all()


# ----------------------------------------------------------------------- 3. one pose for all
def test_every_frame_with_one_pose_is_noted(tmp_path):
    path = write_capture(tmp_path, NGP, 6)
    _rewrite_poses(path, {i: np.eye(4) for i in range(6)})  # a tracker that lost its pose
    for split in ("train", "test"):
        scene = load_scene(path, split)
        assert torch.isfinite(scene.c2w).all()
        note = [n for n in scene.notes if "share one pose" in n]
        assert len(note) == 1 and str(path) in note[0] and "all 6 frames" in note[0]


def test_cameras_at_one_position_are_noted_and_normalise_without_dividing_by_zero(tmp_path):
    """nerfstudio centres and scales by the cameras' spread: a zero spread keeps radius 1."""
    path = write_capture(tmp_path, {"camera_model": "OPENCV", **NGP}, 6)
    _rewrite_poses(path, {i: _pose(_rotation_z(i), [1.0, 2.0, 3.0]) for i in range(6)})
    scene = load_scene(path, "all")
    assert math.isfinite(scene.scale) and np.isfinite(scene.offset).all()
    note = [n for n in scene.notes if "stand at one position" in n]
    assert len(note) == 1 and str(path) in note[0]
    unit = scene.cameras().transformed(scene.scale, scene.offset).c2w[:, :3, 3]
    assert torch.allclose(unit, torch.full_like(unit, 0.5), atol=1e-5)


def test_positions_equal_up_to_float32_rounding_are_one_position(tmp_path):
    """Positions 1000 apart from the origin that differ by float32 rounding noise (1e-4):
    the spread was taken for the scene's size (scale 0.33 / 3e-4), placing the cameras
    hundreds of cube widths off in float32; now they are one position, with a note."""
    path = write_capture(tmp_path, {"camera_model": "OPENCV", **NGP}, 6)
    _rewrite_poses(path, {i: _pose(_rotation_z(i), [1000.0 + 1e-4 * (i % 3), 500.0, 0.0])
                          for i in range(6)})
    scene = load_scene(path, "all")
    unit = scene.cameras().transformed(scene.scale, scene.offset).c2w[:, :3, 3]
    assert torch.isfinite(unit).all() and (unit - 0.5).abs().max() < 1e-3  # was 0.25 off
    assert any("stand at one position" in n for n in scene.notes)


def test_llff_and_blender_note_a_single_position(tmp_path):
    poses = [_pose(_rotation_z(0.4 * i), [0.5, 0.5, 0.5]) for i in range(4)]
    _write_llff(tmp_path / "llff", poses)
    scene = load_scene(tmp_path / "llff", "all")
    assert torch.isfinite(scene.c2w).all()
    assert any("all 4 images stand at one position" in n and "poses_bounds.npy" in n
               for n in scene.notes)
    _write_blender(tmp_path / "blender", [np.eye(4)] * 3)
    scene = load_scene(tmp_path / "blender", "train")
    assert any("all 3 frames share one pose" in n and "transforms_train.json" in n
               for n in scene.notes)


# ----------------------------------------------------------------------- 4. transparent images
def test_every_training_image_fully_transparent_is_noted(tmp_path):
    _write_blender(tmp_path, _circle(3), alpha=0)
    scene = load_scene(tmp_path, "train")
    note = [n for n in scene.notes if "fully transparent" in n]
    assert len(note) == 1
    assert "every image of split 'train'" in note[0] and str(tmp_path / "train") in note[0]
    assert "train to empty space" in note[0]
    assert not any("transparent" in n for n in load_scene(tmp_path, "train",
                                                          decode=False).notes)


def test_some_fully_transparent_images_are_counted(tmp_path):
    alpha = [255, 0, 255, 0]
    _write_blender(tmp_path, _circle(4), alpha=alpha)
    note = [n for n in load_scene(tmp_path, "train").notes if "fully transparent" in n]
    assert len(note) == 1 and note[0].startswith("2 of 4 images of split 'train'")
    assert "r_1.png, r_3.png" in note[0]
    # an image transparent only where the three sampled pixels lie is not fully transparent
    partly = np.zeros((H, W), dtype=np.uint8)
    partly[1, 2] = 255
    _write_blender(tmp_path, _circle(4), alpha=[partly] * 4)
    assert not any("transparent" in n for n in load_scene(tmp_path, "train").notes)


def test_transparent_capture_images_are_noted(tmp_path):
    path = write_capture(tmp_path, NGP, 4)
    for k in range(4):
        Image.new("RGBA", (W, H), (10, 20, 30, 0)).save(tmp_path / "images" / f"{k:04d}.png")
    scene = load_scene(path, "train")
    assert any("every image of split 'train'" in n and str(tmp_path / "images") in n
               for n in scene.notes)


# ----------------------------------------------------------------------- 5. eval points
@pytest.mark.parametrize("train, unit", [({"max_steps": 10, "eval_at": [5, 20, 40]}, "steps"),
                                         ({"max_seconds": 30.0, "eval_at": [60]}, "seconds")])
def test_eval_points_beyond_the_budget_are_refused(train, unit):
    with pytest.raises(ConfigError) as info:
        make_config("cpu", {"train": train})
    message = str(info.value)
    budget = "train.max_steps (--steps) = 10" if unit == "steps" else (
        "train.max_seconds (--seconds) = 30")
    assert budget in message and f"{unit} here" in message
    assert ("points 20, 40 lie" if unit == "steps" else "point 60 lies") in message
    # a saved run's config (render, export, resume) still loads: its later points are
    # simply never reached
    assert config_from_dict({"train": train}).train.eval_at == tuple(train["eval_at"])


def test_eval_points_beyond_the_presets_default_budget_name_it():
    with pytest.raises(ConfigError, match=r"point 400 lies .* = 300 seconds \(the preset's "
                                          "default budget"):
        make_config("cpu", {"train": {"eval_at": [60, 400]}})


def test_valid_eval_points_still_validate():
    for preset in PRESETS:  # a preset's points with its budget, and dropped for another
        config = make_config(preset)
        assert max(config.train.eval_at) <= config.train.max_seconds
        assert make_config(preset, {"train": {"max_steps": 5}}).train.eval_at == ()
    assert make_config("cpu", {"train": {"max_steps": 10, "eval_at": [5, 10]}})  # the end
    assert make_config("cpu", {"train": {"max_seconds": 30, "eval_at": [15, 30]}})


# ----------------------------------------------------------------------- 6. camera paths
def test_camera_path_with_a_sheared_rotation_is_refused(tmp_path):
    good = cp.look_at((2.0, 0.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)).double().numpy()
    sheared = good.copy()
    sheared[:3, :3] = good[:3, :3] @ SHEAR
    doc = {"width": 8, "height": 6, "frames": [{"c2w": good.tolist(), "fov_y": 40.0},
                                               {"c2w": sheared.tolist(), "fov_y": 40.0}]}
    path = tmp_path / "path.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(NerfmineError) as info:
        cp.read_camera_path(path)
    message = str(info.value)
    assert str(path) in message and "frames[1].c2w is not a rotation" in message
    studio = {"render_width": 8, "render_height": 6, "fps": 24,
              "camera_path": [{"camera_to_world": sum(sheared.tolist(), []), "fov": 50}]}
    path.write_text(json.dumps(studio))
    with pytest.raises(NerfmineError, match=r"camera_path\[0\].camera_to_world is not a "
                                            "rotation"):
        cp.read_camera_path(path)


def test_camera_path_drift_and_uniform_scale_are_corrected(tmp_path):
    good = cp.look_at((2.0, 0.0, 1.0), (0.0, 0.0, 0.0), (0.0, 0.0, 1.0)).double().numpy()
    scaled, drifted = good.copy(), good.copy()
    scaled[:3, :3] *= 2.5
    drifted[:3, :3] += 3e-3 * np.random.default_rng(0).normal(size=(3, 3))
    doc = {"width": 8, "height": 6, "frames": [{"c2w": scaled.tolist(), "fov_y": 40.0},
                                               {"c2w": drifted.tolist(), "fov_y": 40.0}]}
    path = tmp_path / "path.json"
    path.write_text(json.dumps(doc))
    poses = cp.read_camera_path(path).c2w
    assert _is_rotation(poses)
    assert torch.allclose(poses[0], torch.from_numpy(good).float(), atol=1e-6)
    assert torch.allclose(poses[1], torch.from_numpy(good).float(), atol=1e-2)
