"""COLMAP sparse models through pycolmap (nerfmine.data.colmap and load_scene's dispatch).

Every test writes its own tiny model with pycolmap (binary and text) and 8x6 images.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

pycolmap = pytest.importorskip(
    "pycolmap", reason="pycolmap is optional (pip install 'nerfmine[colmap]')"
)

from nerfmine.data import load_scene  # noqa: E402
from nerfmine.data.colmap import load_colmap  # noqa: E402
from nerfmine.errors import DataError  # noqa: E402

W, H = 8, 6
PINHOLE = ("PINHOLE", [10.0, 11.0, 4.5, 3.5])
OPENCV = ("OPENCV", [12.0, 13.0, 4.0, 3.0, 0.1, -0.02, 0.003, -0.004])


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _write_project(root, cameras=(PINHOLE, OPENCV), n_images=9, extra_files=(), seed=0,
                   points=None, seen_by=None):
    """root/images/img0k.png (+ extra unposed files) and root/sparse/0 (binary), root/text.

    Image k (names img00..) uses camera k % len(cameras) + 1. ``seen_by`` gives, per point,
    the indices k of the images that observe it (its track; default: none). Returns
    {name: (R, t)}.
    """
    n_points = 4 if points is None else len(points)
    keypoints = np.zeros((n_points, 2))  # keypoint j of an image observes point j
    rng = np.random.default_rng(seed)
    rec = pycolmap.Reconstruction()
    for cid, (model, params) in enumerate(cameras, start=1):
        cam = pycolmap.Camera(model=model, width=W, height=H, params=params, camera_id=cid)
        rec.add_camera_with_trivial_rig(cam)
    poses = {}
    # add in shuffled order: the loader must sort by name, not by image id
    for k in rng.permutation(n_images):
        name = f"img{k:02d}.png"
        rot, t = _rotation(rng), rng.normal(size=3) * 2.0
        image = pycolmap.Image(
            name=name,
            keypoints=keypoints if seen_by is not None else np.zeros((0, 2)),
            camera_id=int(k % len(cameras)) + 1,
            image_id=int(k) + 1,
        )
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(rot), t))
        poses[name] = (rot, t)
    for j, p in enumerate(rng.normal(size=(4, 3)) if points is None else points):
        track = pycolmap.Track()
        for k in (seen_by[j] if seen_by is not None else ()):
            track.add_element(int(k) + 1, j)
        rec.add_point3D(p, track, np.zeros(3, dtype=np.uint8))
    (root / "sparse" / "0").mkdir(parents=True)
    (root / "text").mkdir()
    rec.write(str(root / "sparse" / "0"))
    rec.write_text(str(root / "text"))
    (root / "images").mkdir()
    for k, name in enumerate(list(poses) + list(extra_files)):
        pixels = np.full((H, W, 3), 20 * k % 256, dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / name)
    return poses


def _expected(poses, names):
    centres = np.stack([-poses[n][0].T @ poses[n][1] for n in sorted(poses)])
    centre = centres.mean(0)
    radius = np.linalg.norm(centres - centre, axis=1).max()
    return {n: (-poses[n][0].T @ poses[n][1] - centre) / radius for n in names}


@pytest.mark.parametrize("model", ["sparse/0", "text"])
def test_poses_are_opengl_camera_to_world_normalised(tmp_path, model):
    poses = _write_project(tmp_path)
    scene = load_colmap(tmp_path / model, tmp_path / "images", split="all")
    names = [p.name for p in scene.image_paths]
    assert names == sorted(poses)
    assert scene.dialect == "colmap" and scene.scale == pytest.approx(0.33)
    assert scene.offset == (0.5, 0.5, 0.5)
    c2w = scene.c2w.double().numpy()
    expected = _expected(poses, names)
    for k, name in enumerate(names):
        rot, _ = poses[name]
        np.testing.assert_allclose(c2w[k, :3, 3], expected[name], atol=1e-5)
        # OpenGL -z is COLMAP's +z viewing direction; +y is COLMAP's -y; +x unchanged
        np.testing.assert_allclose(-c2w[k, :3, 2], rot.T @ [0, 0, 1], atol=1e-6)
        np.testing.assert_allclose(c2w[k, :3, 1], -(rot.T @ [0, 1, 0]), atol=1e-6)
        np.testing.assert_allclose(c2w[k, :3, 0], rot.T @ [1, 0, 0], atol=1e-6)
        np.testing.assert_allclose(c2w[k, 3], [0, 0, 0, 1])
    dist = np.linalg.norm(c2w[:, :3, 3] - c2w[:, :3, 3].mean(0), axis=1)
    assert dist.max() == pytest.approx(1.0, abs=1e-5)


def test_intrinsics_distortion_and_downscale(tmp_path):
    _write_project(tmp_path)
    scene = load_colmap(tmp_path / "sparse/0", tmp_path / "images", split="all")
    assert scene.camera_model == "opencv"
    assert scene.images.shape == (9, H, W, 4) and str(scene.images.dtype) == "torch.uint8"
    for k, path in enumerate(scene.image_paths):
        idx = int(path.stem[3:])
        if idx % 2 == 0:  # camera 1, PINHOLE: zero coefficients in an "opencv" scene
            np.testing.assert_allclose(scene.intrinsics[k], [10, 11, 4.5, 3.5])
            np.testing.assert_allclose(scene.distortion[k], np.zeros(6))
        else:  # camera 2, OPENCV k1 k2 p1 p2 -> (k1, k2, k3=0, k4=0, p1, p2)
            np.testing.assert_allclose(scene.intrinsics[k], [12, 13, 4, 3])
            np.testing.assert_allclose(
                scene.distortion[k], [0.1, -0.02, 0, 0, 0.003, -0.004], rtol=1e-6
            )
    assert (scene.fx, scene.fy, scene.cx, scene.cy) == (10, 11, 4.5, 3.5)
    half = load_colmap(tmp_path / "sparse/0", tmp_path / "images", split="all", downscale=2)
    assert (half.width, half.height) == (W // 2, H // 2)
    np.testing.assert_allclose(half.intrinsics, scene.intrinsics / 2)


@pytest.mark.parametrize(
    "cameras, kind, intr, dist",
    [
        ([("SIMPLE_PINHOLE", [9.0, 4.0, 3.0])], "pinhole", [9, 9, 4, 3], None),
        ([("SIMPLE_RADIAL", [9.0, 4.0, 3.0, 0.05])], "opencv", [9, 9, 4, 3], [0.05, 0, 0, 0, 0, 0]),
        (
            [("RADIAL", [9.0, 4.0, 3.0, 0.05, -0.01])],
            "opencv",
            [9, 9, 4, 3],
            [0.05, -0.01, 0, 0, 0, 0],
        ),
        (
            [("OPENCV_FISHEYE", [9.0, 8.0, 4.0, 3.0, 0.1, 0.2, 0.3, 0.4])],
            "fisheye",
            [9, 8, 4, 3],
            [0.1, 0.2, 0.3, 0.4, 0, 0],
        ),
        (
            [("SIMPLE_RADIAL_FISHEYE", [9.0, 4.0, 3.0, 0.1])],
            "fisheye",
            [9, 9, 4, 3],
            [0.1, 0, 0, 0, 0, 0],
        ),
        (
            [("RADIAL_FISHEYE", [9.0, 4.0, 3.0, 0.1, 0.2])],
            "fisheye",
            [9, 9, 4, 3],
            [0.1, 0.2, 0, 0, 0, 0],
        ),
    ],
)
def test_camera_model_mapping(tmp_path, cameras, kind, intr, dist):
    _write_project(tmp_path, cameras=cameras, n_images=2)
    scene = load_colmap(tmp_path / "sparse/0", tmp_path / "images", split="all")
    assert scene.camera_model == kind
    np.testing.assert_allclose(scene.intrinsics[0], intr)
    if dist is None:
        assert scene.distortion is None
    else:
        np.testing.assert_allclose(scene.distortion[0], dist, rtol=1e-6)


def test_holdout_every_8th_by_name(tmp_path):
    _write_project(tmp_path)
    args = (tmp_path / "sparse/0", tmp_path / "images")
    test = load_colmap(*args, split="test")
    train = load_colmap(*args)
    assert [p.name for p in test.image_paths] == ["img00.png", "img08.png"]
    assert [p.name for p in train.image_paths] == [f"img{k:02d}.png" for k in range(1, 8)]
    # both splits share one normalised world
    every = load_colmap(*args, split="all")
    np.testing.assert_allclose(every.c2w[[0, 8]], test.c2w)
    assert [p.name for p in load_colmap(*args, split="test", holdout_every=4).image_paths] == [
        "img00.png",
        "img04.png",
        "img08.png",
    ]
    with pytest.raises(DataError, match="'train', 'test'"):
        load_colmap(*args, split="val")


def test_unsupported_camera_model(tmp_path):
    _write_project(tmp_path, cameras=(PINHOLE, ("FOV", [10.0, 10.0, 4.0, 3.0, 0.5])))
    with pytest.raises(DataError, match=r"camera 2 .*FOV.*not supported.*PINHOLE.*OPENCV"):
        load_colmap(tmp_path / "sparse/0", tmp_path / "images")


def test_mixed_fisheye_and_perspective_refused(tmp_path):
    _write_project(tmp_path, cameras=(PINHOLE, ("OPENCV_FISHEYE", [9, 9, 4, 3, 0, 0, 0, 0])))
    with pytest.raises(DataError, match="mixes fisheye and perspective"):
        load_colmap(tmp_path / "sparse/0", tmp_path / "images")


def test_missing_image_error_and_skip(tmp_path):
    poses = _write_project(tmp_path)
    (tmp_path / "images" / "img03.png").unlink()
    args = (tmp_path / "sparse/0", tmp_path / "images")
    with pytest.raises(DataError, match=r"1 of 9 registered images do not exist.*img03.png"):
        load_colmap(*args)
    scene = load_colmap(*args, split="all", skip_missing=True)
    assert len(scene) == 8 and "img03.png" not in [p.name for p in scene.image_paths]
    assert any("skipped 1 of 9" in n for n in scene.notes)
    # dropped before the hold-out, and the world is normalised over the images used
    test = load_colmap(*args, split="test", skip_missing=True)
    assert [p.name for p in test.image_paths] == ["img00.png"]
    kept = {n: poses[n] for n in poses if n != "img03.png"}
    expected = _expected(kept, ["img00.png"])
    np.testing.assert_allclose(test.c2w[0, :3, 3], expected["img00.png"], atol=1e-5)
    for p in (tmp_path / "images").glob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match="none of the 9 registered images exist"):
        load_colmap(*args, skip_missing=True)


def test_unregistered_image_files_are_noted(tmp_path):
    _write_project(tmp_path, extra_files=("img09.png", "zz_blurry.jpg"))
    scene = load_colmap(tmp_path / "sparse/0", tmp_path / "images", split="all")
    assert len(scene) == 9
    note = [n for n in scene.notes if "no pose" in n]
    assert len(note) == 1 and "2 of 11 image files" in note[0] and "img09.png" in note[0]


def test_load_scene_dispatches_colmap_folder(tmp_path, monkeypatch):
    _write_project(tmp_path)
    scene = load_scene(tmp_path, split="test")
    assert scene.dialect == "colmap"
    assert [p.name for p in scene.image_paths] == ["img00.png", "img08.png"]
    direct = load_colmap(tmp_path / "sparse/0", tmp_path / "images", split="test")
    np.testing.assert_allclose(scene.c2w, direct.c2w)
    monkeypatch.setitem(sys.modules, "pycolmap", None)  # import pycolmap -> ImportError
    with pytest.raises(DataError, match=r"pip install 'nerfmine\[colmap\]'"):
        load_scene(tmp_path)


def test_the_box_holds_the_sparse_points(tmp_path):
    """aabb_scale grows until the box holds 99% of the sparse points (a room around the
    cameras is modelled), ignores a stray point, and stays 1 for points among the cameras."""
    rng = np.random.default_rng(5)
    near = _write_project(tmp_path / "near", points=rng.normal(size=(50, 3)) * 0.5)
    assert load_colmap(tmp_path / "near" / "sparse" / "0", tmp_path / "near" / "images",
                       "all").aabb_scale == 1.0
    centres = np.stack([-r.T @ t for r, t in near.values()])
    radius = np.linalg.norm(centres - centres.mean(0), axis=1).max()
    # A "room": points 6 radii out along an axis from the cameras' centre, and one stray far.
    room = centres.mean(0) + 6 * radius * rng.choice([-1.0, 1.0], size=(200, 1)) * np.eye(3)[
        rng.integers(0, 3, 200)]
    room = np.concatenate([room, [centres.mean(0) + 1000 * radius]])
    _write_project(tmp_path / "room", points=room)
    scene = load_colmap(tmp_path / "room" / "sparse" / "0", tmp_path / "room" / "images", "all")
    assert scene.aabb_scale == 4.0  # 2 * 0.33 * 6 = 3.96 -> 4, the stray point left out
    assert any("aabb_scale 4 from the 201 sparse points" in note and "no image observes" in note
               for note in scene.notes)


def test_the_box_holds_what_every_image_sees(tmp_path):
    """With observations, the box holds 99.5% of the points each image sees: a room behind
    the object that only one view observes (0.7% of all points, so 99% of them lie on the
    object) is modelled, while a stray far point seen by one view is not."""
    rng = np.random.default_rng(6)
    poses = _write_project(tmp_path / "probe")
    centres = np.stack([-r.T @ t for r, t in poses.values()])
    centre = centres.mean(0)
    radius = np.linalg.norm(centres - centre, axis=1).max()
    n_object = 3000
    obj = centre + rng.normal(size=(n_object, 3)) * 0.2 * radius
    room = centre + 6 * radius * np.eye(3)[rng.integers(0, 3, 20)]  # seen by image 4 only
    stray = centre + 1000 * radius * np.ones((1, 3))  # seen by image 2 only
    points = np.concatenate([obj, room, stray])
    every = list(range(9))
    seen_by = [every] * n_object + [[4]] * len(room) + [[2]]
    _write_project(tmp_path / "room", points=points, seen_by=seen_by)
    args = (tmp_path / "room" / "sparse" / "0", tmp_path / "room" / "images", "all")
    scene = load_colmap(*args)
    assert scene.aabb_scale == 4.0  # the room: 2 * 0.33 * 6 = 3.96 -> 4; the stray left out
    assert any("aabb_scale 4 from the 3021 sparse points (each of the 9 images that observe at "
               "least 200 of them sees 99.5%" in note for note in scene.notes)
    # Without the room the views see only the object (and image 2 its stray point): the box
    # is the unit cube, as 99% of all points would also say.
    _write_project(tmp_path / "object", points=np.concatenate([obj, stray]),
                   seen_by=[every] * n_object + [[2]])
    assert load_colmap(tmp_path / "object" / "sparse" / "0", tmp_path / "object" / "images",
                       "all").aabb_scale == 1.0
