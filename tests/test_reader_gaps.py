"""Two gaps of the capture readers closed:

- ``--downscale N`` reads the pre-downscaled ``images_N/`` beside ``images/`` in the COLMAP and
  transforms.json readers too (as the LLFF reader did), when it holds every image at exactly
  ``w // N`` by ``h // N``; a folder that does not fit is ignored with a note. The helper is
  :func:`nerfmine.data.files.prescaled_images`.
- A transforms.json whose distortion (and ``is_fisheye``) is written only per frame gets that
  lens, not a pinhole camera.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerfmine.data import load_scene
from nerfmine.errors import DataError

# Sizes N does not divide: downscale 2 gives 4x3, and the intrinsics scale by 4/9 and 3/7.
W, H = 9, 7
MAGENTA = (255, 0, 255)


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _write_copies(root: Path, names: list[str], size: tuple[int, int], folder="images_2"):
    """``root/folder/name`` for every name: solid magenta images of ``size``, content no
    resampling of the originals gives."""
    for name in names:
        path = root / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, MAGENTA).save(path)


def _solid(images: torch.Tensor) -> bool:
    return bool((images[..., :3] == torch.tensor(MAGENTA, dtype=torch.uint8)).all())


# ----------------------------------------------------------------------- transforms.json

def _pose(i: int) -> list:
    angle = 2 * math.pi * i / 6
    m = np.eye(4)
    # look at the origin from a circle of radius 2 (+z backward)
    back = np.array([math.cos(angle), math.sin(angle), 0.3])
    back /= np.linalg.norm(back)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    m[:3, 0], m[:3, 1], m[:3, 2] = right, np.cross(back, right), back
    m[:3, 3] = 2 * back
    return m.tolist()


def _write_transforms(root: Path, meta: dict, n: int = 6, frame_keys=None) -> Path:
    """``root/images/frame_0000k.png`` (noise) and ``root/transforms.json`` listing them;
    ``frame_keys(i)`` adds keys to frame i."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        rel = f"images/frame_{i:05d}.png"
        Image.fromarray(_noise(i)).save(root / rel)
        frames.append({"file_path": rel, "transform_matrix": _pose(i),
                       **(frame_keys(i) if frame_keys else {})})
    path = root / "transforms.json"
    path.write_text(json.dumps({**meta, "frames": frames}))
    return path


NGP = {"fl_x": 8.0, "fl_y": 8.5, "cx": 4.3, "cy": 3.6, "w": W, "h": H}


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "images").iterdir())


def test_transforms_downscale_reads_images_2(tmp_path):
    plain = _write_transforms(tmp_path / "plain", NGP)
    copied = _write_transforms(tmp_path / "copied", NGP)
    _write_copies(copied.parent, _names(copied.parent), (W // 2, H // 2))

    box = load_scene(plain, "all", downscale=2)  # no images_2/: the originals box-filtered
    read = load_scene(copied, "all", downscale=2)
    assert _solid(read.images) and not _solid(box.images)
    assert all(p.parent.name == "images_2" for p in read.image_paths)
    assert [p.name for p in read.image_paths] == [p.name for p in box.image_paths]
    assert (read.width, read.height) == (box.width, box.height) == (W // 2, H // 2)
    # The same cameras as box-filtering: intrinsics scaled by 4/9 and 3/7 (not by 1/2).
    assert torch.equal(read.intrinsics, box.intrinsics)
    assert read.intrinsics[0].tolist() == pytest.approx(
        [8.0 * 4 / 9, 8.5 * 3 / 7, 4.3 * 4 / 9, 3.6 * 3 / 7])
    assert torch.equal(read.c2w, box.c2w)
    assert not any("images_2" in n for n in read.notes)
    # Every split reads the copies; downscale 1 still reads the originals.
    assert _solid(load_scene(copied, "test", downscale=2).images)
    full = load_scene(copied, "all")
    assert all(p.parent.name == "images" for p in full.image_paths)
    # decode=False: the same shape, no pixels read
    assert load_scene(copied, "all", downscale=2, decode=False).images.shape == read.images.shape


def test_transforms_wrong_size_images_2_is_ignored_with_a_note(tmp_path):
    path = _write_transforms(tmp_path, NGP)
    box = load_scene(path, "all", downscale=2).images
    # 5x4 is w / 2 rounded up: not what --downscale 2 gives, so not used.
    _write_copies(tmp_path, _names(tmp_path), (5, 4))
    scene = load_scene(path, "all", downscale=2)
    assert torch.equal(scene.images, box)
    assert all(p.parent.name == "images" for p in scene.image_paths)
    note = next(n for n in scene.notes if "images_2" in n)
    assert "is 5x4, not 4x3" in note and "box-filtered instead" in note


def test_transforms_images_2_missing_a_file_is_ignored_with_a_note(tmp_path):
    path = _write_transforms(tmp_path, NGP)
    _write_copies(tmp_path, _names(tmp_path)[1:], (W // 2, H // 2))
    scene = load_scene(path, "all", downscale=2)
    assert not _solid(scene.images)
    note = next(n for n in scene.notes if "images_2" in n)
    assert "1 of the 6 images are missing" in note and "frame_00000.png" in note


def test_transforms_images_n_keeps_subfolders_and_the_folder_name(tmp_path):
    """file_path's first component gets the _N: rgb/left/x.png -> rgb_4/left/x.png."""
    (tmp_path / "rgb" / "left").mkdir(parents=True)
    frames = []
    for i in range(3):
        rel = f"rgb/left/{i}.png"
        Image.fromarray(_noise(i)).save(tmp_path / rel)
        frames.append({"file_path": "./" + rel, "transform_matrix": _pose(i)})
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({**NGP, "frames": frames}))
    _write_copies(tmp_path, [f"left/{i}.png" for i in range(3)], (W // 4, H // 4), "rgb_4")
    scene = load_scene(path, "all", downscale=4)
    assert _solid(scene.images)
    assert [p.relative_to(tmp_path).as_posix() for p in scene.image_paths] == [
        f"rgb_4/left/{i}.png" for i in range(3)]


# ----------------------------------------------------------------------- COLMAP

def _write_colmap(root: Path, n: int = 6) -> list[str]:
    """root/sparse/0 (binary) with one OPENCV camera and root/images/img0k.png (noise)."""
    pycolmap = pytest.importorskip("pycolmap", reason="pycolmap is optional")
    rec = pycolmap.Reconstruction()
    cam = pycolmap.Camera(model="OPENCV", width=W, height=H,
                          params=[8.0, 8.5, 4.3, 3.6, 0.05, -0.01, 0.002, -0.001], camera_id=1)
    rec.add_camera_with_trivial_rig(cam)
    names = []
    for k in range(n):
        c2w = np.array(_pose(k))
        c2w[:3, 1:3] *= -1  # OpenGL -> OpenCV camera axes
        rot = c2w[:3, :3].T
        t = -rot @ c2w[:3, 3]
        name = f"img{k:02d}.png"
        image = pycolmap.Image(name=name, keypoints=np.zeros((0, 2)), camera_id=1,
                               image_id=k + 1)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(rot), t))
        names.append(name)
    for p in np.random.default_rng(0).normal(size=(4, 3)):
        rec.add_point3D(p, pycolmap.Track(), np.zeros(3, dtype=np.uint8))
    (root / "sparse" / "0").mkdir(parents=True)
    rec.write(str(root / "sparse" / "0"))
    (root / "images").mkdir()
    for k, name in enumerate(names):
        Image.fromarray(_noise(k)).save(root / "images" / name)
    return names


def test_colmap_downscale_reads_images_2(tmp_path):
    names = _write_colmap(tmp_path / "plain")
    shutil.copytree(tmp_path / "plain", tmp_path / "copied")
    _write_copies(tmp_path / "copied", names, (W // 2, H // 2))
    box = load_scene(tmp_path / "plain", "all", downscale=2)
    read = load_scene(tmp_path / "copied", "all", downscale=2)
    assert read.dialect == "colmap" and read.camera_model == "opencv"
    assert _solid(read.images) and not _solid(box.images)
    assert [p.relative_to(tmp_path / "copied").as_posix() for p in read.image_paths] == [
        f"images_2/{n}" for n in names]
    assert (read.width, read.height) == (W // 2, H // 2)
    assert torch.equal(read.intrinsics, box.intrinsics)
    assert read.intrinsics[0].tolist() == pytest.approx(
        [8.0 * 4 / 9, 8.5 * 3 / 7, 4.3 * 4 / 9, 3.6 * 3 / 7])
    assert torch.equal(read.distortion, box.distortion) and torch.equal(read.c2w, box.c2w)
    assert not any("images_2" in n for n in read.notes)
    assert _solid(load_scene(tmp_path / "copied", "train", downscale=2).images)
    assert load_scene(tmp_path / "copied", "all", downscale=2,
                      decode=False).images.shape == read.images.shape


def test_colmap_wrong_size_images_2_is_ignored_with_a_note(tmp_path):
    names = _write_colmap(tmp_path)
    box = load_scene(tmp_path, "all", downscale=2).images
    _write_copies(tmp_path, names, (W // 2, H // 2))
    Image.new("RGB", (W // 2 + 1, H // 2), MAGENTA).save(tmp_path / "images_2" / names[-1])
    scene = load_scene(tmp_path, "all", downscale=2)
    assert torch.equal(scene.images, box)
    assert all(p.parent.name == "images" for p in scene.image_paths)
    note = next(n for n in scene.notes if "images_2" in n)
    assert f"{names[-1]} in it is 5x3, not 4x3" in note and "box-filtered instead" in note


# ----------------------------------------------------------------------- LLFF (the helper's
# rounding for ImageMagick-made folders; tests/test_llff.py covers the rest)

def _write_llff(root: Path, n: int = 4) -> None:
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        c2w = np.array(_pose(i))
        drb = np.stack([-c2w[:3, 1], c2w[:3, 0], c2w[:3, 2]], axis=1)  # down, right, back
        mat = np.concatenate([drb, c2w[:3, 3:4], np.array([[H], [W], [8.0]])], axis=1)
        rows.append(np.concatenate([mat.reshape(-1), [0.5, 6.0]]))
        Image.fromarray(_noise(i)).save(root / "images" / f"IMG_{i:03d}.JPG")
    np.save(root / "poses_bounds.npy", np.stack(rows))


@pytest.mark.parametrize("size, used", [((4, 3), True), ((5, 4), True), ((6, 3), False)])
def test_llff_accepts_images_n_rounded_either_way(tmp_path, size, used):
    """LLFF's and Mip-NeRF 360's images_N/ are ImageMagick's -resize (rounded half up, named
    image000.png...): 9x7 / 2 may be 4x3 or 5x4; 6x3 is neither and is ignored."""
    _write_llff(tmp_path)
    _write_copies(tmp_path, [f"image{i:03d}.png" for i in range(4)], size)
    scene = load_scene(tmp_path, "all", downscale=2)
    assert _solid(scene.images) == used
    if used:
        assert (scene.width, scene.height) == size
        assert scene.intrinsics[0, 0].item() == pytest.approx(8.0 * size[0] / W)
    else:
        assert (scene.width, scene.height) == (4, 3)
        assert any("images_2 is not used" in n and "is 6x3" in n for n in scene.notes)


def test_llff_images_n_that_does_not_fit_without_images_is_an_error(tmp_path):
    _write_llff(tmp_path)
    _write_copies(tmp_path, [f"image{i:03d}.png" for i in range(3)], (4, 3))  # 3 of 4
    shutil.rmtree(tmp_path / "images")
    with pytest.raises(DataError, match="holds 3 image files, not the 4 needed"):
        load_scene(tmp_path, "all", downscale=2)


# ----------------------------------------------------------------------- per-frame lens

LENS = {"k1": 0.08, "k2": -0.02, "p1": 0.003, "p2": -0.002}


def _same_cameras(a, b) -> None:
    assert a.camera_model == b.camera_model
    assert torch.equal(a.intrinsics, b.intrinsics) and torch.equal(a.distortion, b.distortion)
    ca, cb = a.cameras(), b.cameras()
    for k in range(len(a)):
        oa, da = ca.image_rays(k)
        ob, db = cb.image_rays(k)
        assert torch.equal(oa, ob) and torch.equal(da, db)


@pytest.mark.parametrize("lens, model", [
    (LENS, "opencv"),
    ({"is_fisheye": True, "k1": 0.05, "k2": 0.01, "k3": -0.002, "k4": 0.001}, "fisheye"),
])
def test_instant_ngp_lens_per_frame_equals_top_level(tmp_path, lens, model):
    top = load_scene(_write_transforms(tmp_path / "top", {**NGP, **lens}), "all")
    per_frame = load_scene(_write_transforms(tmp_path / "frames", NGP,
                                             frame_keys=lambda i: dict(lens)), "all")
    assert top.camera_model == model
    _same_cameras(top, per_frame)
    # the rays do bend: a pinhole camera of the same intrinsics gives others
    pinhole = load_scene(_write_transforms(tmp_path / "pinhole", NGP), "all")
    assert pinhole.camera_model == "pinhole"
    assert not torch.equal(pinhole.cameras().image_rays(0)[1], top.cameras().image_rays(0)[1])
    assert not any("ignored" in n for n in per_frame.notes)


def test_nerfstudio_lens_per_frame_equals_top_level(tmp_path):
    meta = {**NGP, "camera_model": "OPENCV", "scale": 0.3, "offset": [0.5, 0.5, 0.5]}
    top = load_scene(_write_transforms(tmp_path / "top", {**meta, **LENS}), "all")
    per_frame = load_scene(_write_transforms(tmp_path / "frames", meta,
                                             frame_keys=lambda i: dict(LENS)), "all")
    assert top.dialect == per_frame.dialect == "nerfstudio"
    _same_cameras(top, per_frame)


def test_instant_ngp_lens_on_some_frames_and_mixed_fisheye(tmp_path):
    # coefficients on one frame only: an "opencv" scene, the others with zero coefficients
    path = _write_transforms(tmp_path / "one", NGP,
                             frame_keys=lambda i: dict(LENS) if i == 2 else {})
    scene = load_scene(path, "all")
    assert scene.camera_model == "opencv"
    assert scene.distortion[2].tolist() == pytest.approx([0.08, -0.02, 0, 0, 0.003, -0.002])
    assert not scene.distortion[[0, 1, 3, 4, 5]].any()
    # a frame's key wins over the top level's
    path = _write_transforms(tmp_path / "override", {**NGP, "k1": 0.3},
                             frame_keys=lambda i: {"k1": 0.1})
    assert load_scene(path, "all").distortion[:, 0].tolist() == pytest.approx([0.1] * 6)
    # one fisheye frame among perspective ones: refused, naming both
    path = _write_transforms(tmp_path / "mixed", NGP,
                             frame_keys=lambda i: {"is_fisheye": i == 1})
    with pytest.raises(DataError, match=r"frames\[1\] is a fisheye camera .* frames\[0\]"):
        load_scene(path, "all")
    path = _write_transforms(tmp_path / "bad", NGP, frame_keys=lambda i: {"is_fisheye": "yes"})
    with pytest.raises(DataError, match="'is_fisheye' must be true or false"):
        load_scene(path, "all")


def test_transforms_frames_in_several_folders_do_not_use_images_2(tmp_path):
    path = _write_transforms(tmp_path, NGP)
    meta = json.loads(path.read_text())
    (tmp_path / "other").mkdir()
    shutil.move(tmp_path / "images" / "frame_00005.png", tmp_path / "other" / "frame_00005.png")
    meta["frames"][5]["file_path"] = "other/frame_00005.png"
    path.write_text(json.dumps(meta))
    _write_copies(tmp_path, _names(tmp_path), (W // 2, H // 2))
    scene = load_scene(path, "all", downscale=2)
    assert not _solid(scene.images)
    assert any("images_2 is not used" in n and "not all in" in n for n in scene.notes)
