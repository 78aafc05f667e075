"""LLFF / Mip-NeRF 360 folders (nerfmine.data.llff): the axis convention on cameras of known
geometry, the pre-downscaled image folders, the hold-out, the scene's box, and bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from nerfmine.data import load_scene
from nerfmine.data.capture import aabb_scale_for_extent
from nerfmine.data.llff import llff_to_opengl
from nerfmine.errors import DataError

W, H, F, N = 24, 16, 20.0, 10


def _look_at(eye: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world pose at ``eye`` looking at the world origin, +z up."""
    back = eye / np.linalg.norm(eye)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m


def write_llff(folder, n=N, far=6.0, half=True, extra_image=False):
    """Cameras on a circle of radius 2 around the origin, looking at it; poses_bounds.npy in
    LLFF's down/right/back convention; images/ at W x H and images_2/ at half size."""
    (folder / "images").mkdir(parents=True)
    if half:
        (folder / "images_2").mkdir()
    rng = np.random.default_rng(0)
    rows, poses = [], []
    for i in range(n):
        angle = 2 * math.pi * i / n
        c2w = _look_at(np.array([2 * math.cos(angle), 2 * math.sin(angle), 0.5]))
        poses.append(c2w)
        drb = np.stack([-c2w[:3, 1], c2w[:3, 0], c2w[:3, 2]], axis=1)  # down, right, back
        mat = np.concatenate([drb, c2w[:3, 3:4], np.array([[H], [W], [F]])], axis=1)  # [3, 5]
        rows.append(np.concatenate([mat.reshape(-1), [0.5, far]]))
        pixels = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"IMG_{i:03d}.png")
        if half:
            Image.fromarray(pixels[::2, ::2]).save(folder / "images_2" / f"IMG_{i:03d}.png")
    if extra_image:
        Image.fromarray(pixels).save(folder / "images" / "IMG_999.png")
    np.save(folder / "poses_bounds.npy", np.stack(rows))
    return np.stack(poses)


def test_llff_axes_give_the_cameras_their_known_geometry(tmp_path):
    truth = write_llff(tmp_path)
    np.testing.assert_allclose(llff_to_opengl(np.load(tmp_path / "poses_bounds.npy")[:, :15]
                                              .reshape(-1, 3, 5)), truth, atol=1e-12)
    scene = load_scene(tmp_path, "all")
    assert scene.dialect == "llff" and len(scene) == N and scene.camera_model == "pinhole"
    # Normalised: rotations as they were, centres moved to the cameras' mean and scaled.
    c2w = scene.c2w.double().numpy()
    np.testing.assert_allclose(c2w[:, :3, :3], truth[:, :3, :3], atol=1e-6)
    centre = truth[:, :3, 3].mean(0)
    radius = np.linalg.norm(truth[:, :3, 3] - centre, axis=1).max()
    np.testing.assert_allclose(c2w[:, :3, 3], (truth[:, :3, 3] - centre) / radius, atol=1e-6)
    # The ray through each image's centre passes through the world origin the cameras face.
    target = (np.zeros(3) - centre) / radius
    origins, directions = scene.cameras().image_rays(3)
    middle = (H // 2) * W + W // 2  # the pixel whose centre is (W/2 + 0.5, H/2 + 0.5)
    o, d = origins[middle].double().numpy(), directions[middle].double().numpy()
    miss = np.linalg.norm(np.cross(target - o, d))
    assert miss < 0.05 * np.linalg.norm(target - o)
    assert scene.intrinsics[0].tolist() == [F, F, W / 2, H / 2]


def test_downscale_reads_the_prescaled_folder_and_scales_the_focal_length(tmp_path):
    write_llff(tmp_path)
    half = load_scene(tmp_path, "all", downscale=2)
    assert all(p.parent.name == "images_2" for p in half.image_paths)
    assert half.width == W // 2 and half.height == H // 2
    assert half.intrinsics[0, 0].item() == pytest.approx(F / 2)
    full = load_scene(tmp_path, "all")
    assert torch.equal(half.images[3], full.images[3][::2, ::2])  # the folder's own pixels
    # Without images_4/, downscale 4 box-filters images/.
    quarter = load_scene(tmp_path, "all", downscale=4)
    assert quarter.width == W // 4 and all(p.parent.name == "images" for p in quarter.image_paths)


def test_every_eighth_image_is_held_out(tmp_path):
    write_llff(tmp_path, n=17)
    test = load_scene(tmp_path, "test")
    train = load_scene(tmp_path, "train")
    assert [p.name for p in test.image_paths] == ["IMG_000.png", "IMG_008.png", "IMG_016.png"]
    assert len(train) == 14 and not {p.name for p in train.image_paths} & {
        p.name for p in test.image_paths}


def test_the_box_holds_the_far_bounds(tmp_path):
    assert aabb_scale_for_extent(1.0) == 1.0 and aabb_scale_for_extent(1.6) == 2.0
    assert aabb_scale_for_extent(5.0) == 4.0 and aabb_scale_for_extent(1e3) == 16.0  # capped
    write_llff(tmp_path / "near", far=1.0)
    write_llff(tmp_path / "far", far=30.0)
    near, far = load_scene(tmp_path / "near", "all"), load_scene(tmp_path / "far", "all")
    assert near.aabb_scale < far.aabb_scale <= 16.0
    assert any("aabb_scale" in note for note in far.notes)


def test_bad_llff_folders_name_the_problem(tmp_path):
    write_llff(tmp_path / "extra", extra_image=True)
    with pytest.raises(DataError, match="11 images but .* has 10 poses"):
        load_scene(tmp_path / "extra", "all")
    write_llff(tmp_path / "bad")
    np.save(tmp_path / "bad" / "poses_bounds.npy", np.zeros((10, 12)))
    with pytest.raises(DataError, match=r"expected an \[N, 17\] array"):
        load_scene(tmp_path / "bad", "all")
