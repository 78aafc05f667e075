"""``nerfmine process``: frame selection, photo import, structure from motion on a subset of the
fox photographs checked against their known poses, the transforms.json it writes, and each bad
input's message (with nothing left behind that ``train`` would read as a scene).

SfM runs once per module (17 fox photos at 240 px, about 8 s on two CPU cores).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data_dir
from PIL import Image

pycolmap = pytest.importorskip("pycolmap", reason="pycolmap is optional: "
                                                  "pip install 'nerfmine[process]'")

from nerfmine.cli import main  # noqa: E402
from nerfmine.errors import DataError  # noqa: E402
from nerfmine.process import frames  # noqa: E402

SHARED = shared_data_dir()
FOX = SHARED / "fox" if SHARED else None
needs_fox = pytest.mark.skipif(FOX is None or not (FOX / "transforms.json").is_file(),
                               reason="needs ../shared/data/fox (the benchmark data)")
# The fox subset: every 3rd of the 50 photographs (17, around the figurine) at 240 px wide.
FOX_STEP, FOX_WIDTH = 3, 240


# ----------------------------------------------------------------------- similarity alignment
def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) minimising sum |s R src_i + t - dst_i|^2 over points [N, 3]
    (Umeyama 1991, with the reflection guard of its eq. 39)."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(xd.T @ xs / len(src))
    d = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2, 2] = -1.0
    rot = u @ d @ vt
    s = float(np.trace(np.diag(sig) @ d) / ((xs ** 2).sum() / len(src)))
    return s, rot, mu_d - s * rot @ mu_s


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle (degrees) of the rotation taking rotation matrix ``a`` to ``b``."""
    cos = (np.trace(a.T @ b) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(11, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = q * np.sign(np.linalg.det(q))  # a proper rotation
    dst = 2.5 * src @ rot.T + np.array([1.0, -2.0, 0.5])
    s, r, t = umeyama(src, dst)
    assert s == pytest.approx(2.5, rel=1e-12)
    np.testing.assert_allclose(r, rot, atol=1e-12)
    np.testing.assert_allclose(t, [1.0, -2.0, 0.5], atol=1e-12)
    # a mirrored copy is fitted by the best proper rotation, never a reflection
    _, r_mirror, _ = umeyama(src, src * np.array([1.0, 1.0, -1.0]))
    assert np.linalg.det(r_mirror) == pytest.approx(1.0)
    assert rotation_angle_deg(rot, rot) == 0.0
    assert rotation_angle_deg(np.eye(3), np.diag([1.0, -1.0, -1.0])) == pytest.approx(180.0)


# ----------------------------------------------------------------------- sharpness, frames
def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """[H, W, 3] uint8 detailed texture (noise smoothed a little, so video coding keeps it)."""
    noise = np.random.default_rng(seed).random((h + 2, w + 2, 3))
    smooth = sum(noise[i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9.0
    return (np.clip((smooth - 0.5) * 4 + 0.5, 0, 1) * 255).astype(np.uint8)


def _blurred(image: np.ndarray, passes: int = 4) -> np.ndarray:
    out = image.astype(np.float32)
    for _ in range(passes):  # repeated 5x5 box blur: a strong, smooth blur
        pad = np.pad(out, ((2, 2), (2, 2), (0, 0)), mode="edge")
        out = sum(pad[i:i + out.shape[0], j:j + out.shape[1]]
                  for i in range(5) for j in range(5)) / 25.0
    return out.round().astype(np.uint8)


def test_laplacian_variance_is_zero_on_flat_and_ramps_and_falls_with_blur():
    assert frames.laplacian_variance(np.full((9, 7), 40.0)) == 0.0
    ramp = np.add.outer(np.arange(9.0), 2 * np.arange(7.0))  # linear: Laplacian 0
    assert frames.laplacian_variance(ramp) == pytest.approx(0.0, abs=1e-9)
    assert frames.laplacian_variance(np.zeros((2, 5))) == 0.0  # no interior
    sharp = _texture(64, 80)
    assert frames.sharpness(_blurred(sharp)) < 0.2 * frames.sharpness(sharp)
    # shrinking for the measure keeps the order of sharp and blurred (a 3000-px frame)
    big = np.repeat(np.repeat(sharp, 40, axis=0), 40, axis=1)[:2200, :3000]
    assert frames.sharpness(_blurred(big, 6)) < frames.sharpness(big)


@pytest.mark.parametrize(("total", "count"), [(40, 20), (41, 7), (7, 7), (1, 1), (150, 149)])
def test_windows_cover_every_frame_in_order_with_nearly_equal_sizes(total, count):
    windows = [frames.window_of(i, total, count) for i in range(total)]
    assert windows == sorted(windows) and set(windows) == set(range(count))
    sizes = np.bincount(windows)
    assert sizes.max() - sizes.min() <= 1
    assert frames.window_of(total + 3, total, count) == count - 1  # under-reported length


def test_video_frame_selection_never_picks_a_blurred_frame_over_its_sharp_neighbour(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    h, w, n_frames, count = 96, 128, 40, 20  # windows of two frames each
    base = _texture(h, w + n_frames, seed=1)
    blurred = set()
    video = tmp_path / "clip.mp4"
    writer = imageio_ffmpeg.write_frames(str(video), (w, h), fps=10, quality=10,
                                         macro_block_size=16)
    writer.send(None)
    for i in range(n_frames):
        frame = np.ascontiguousarray(base[:, i:i + w])  # the camera pans one pixel a frame
        window_blurred = (i // 2) % 2  # which of the window's two frames is blurred
        if i % 2 == window_blurred:
            frame = _blurred(frame)
            blurred.add(i)
        writer.send(frame)
    writer.close()
    out = tmp_path / "images"
    out.mkdir()
    seen = []
    stored = frames.select_video_frames(video, out, count, None,
                                        lambda done, total: seen.append((done, total)))
    chosen = [int(s.source.rsplit("#", 1)[1]) for s in stored]
    assert len(chosen) == count
    assert [c // 2 for c in chosen] == list(range(count))  # one per window, in order
    assert not blurred & set(chosen), f"blurred frames chosen: {sorted(blurred & set(chosen))}"
    assert sorted(p.name for p in out.iterdir()) == sorted(s.name for s in stored)
    assert seen[-1] == (n_frames, n_frames)
    # --max-size shrinks the stored frames, the aspect kept
    small = tmp_path / "small"
    small.mkdir()
    stored = frames.select_video_frames(video, small, 3, 64, None)
    assert Image.open(small / stored[0].name).size == (64, 48)


def test_photos_are_stored_upright(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    image = Image.fromarray(_texture(40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(src / "a.jpg", exif=exif, quality=95)
    Image.fromarray(_texture(60, 40, seed=2)).save(src / "b.png")
    out = tmp_path / "images"
    out.mkdir()
    stored = frames.import_photos(src, out, None)
    assert [s.name for s in stored] == ["a.jpg", "b.png"]
    assert Image.open(out / "a.jpg").size == (40, 60)
    assert Image.open(out / "a.jpg").getexif().get(0x0112, 1) == 1  # not rotated twice
    assert (out / "b.png").read_bytes() == (src / "b.png").read_bytes()  # copied as is
    # a landscape photo among portrait ones is named
    Image.fromarray(_texture(40, 60, seed=3)).save(src / "c.png")
    with pytest.raises(DataError, match=r"c\.png \(60x40\)"):
        frames.import_photos(src, tmp_path, None)


# ----------------------------------------------------------------------- the fox subset
@pytest.fixture(scope="module")
def fox_scene(tmp_path_factory):
    if FOX is None or not (FOX / "transforms.json").is_file():
        pytest.skip("needs ../shared/data/fox (the benchmark data)")
    root = tmp_path_factory.mktemp("fox")
    photos = root / "photos"
    photos.mkdir()
    for path in sorted((FOX / "images").glob("*.jpg"))[::FOX_STEP]:
        with Image.open(path) as im:
            size = (FOX_WIDTH, round(im.height * FOX_WIDTH / im.width))
            im.resize(size, Image.LANCZOS).save(photos / path.name, quality=95)
    scene = root / "scene"
    assert main(["process", str(photos), "-o", str(scene), "--quiet"]) == 0
    return photos, scene


@needs_fox
def test_fox_poses_match_the_known_ones(fox_scene):
    """Camera centres aligned to the known ones by a similarity (Umeyama), then each camera's
    rotation compared. The known poses are COLMAP's own, from all the photos at 1080x1920
    (instant-ngp's fox), ours from 17 of them at 240 px, where a pixel spans 4.5 times the
    angle; the errors are those of the small images, not of the conversion (which
    test_fox_scene_reads_the_same... checks exactly). Measured over four runs (thread
    scheduling moves COLMAP's result a little): rotation error at most 0.79 degrees, mean
    0.63; centre error at most 0.91-0.99% of the cameras' spread, mean 0.45%. So the issue's
    1 degree and 1% bound the means, and the worst camera gets 1.5 times that, where a 1% bound
    on it would fail now and then."""
    photos, scene = fox_scene
    known = {Path(f["file_path"]).name: np.array(f["transform_matrix"])
             for f in json.loads((FOX / "transforms.json").read_text())["frames"]}
    ours = {Path(f["file_path"]).name: np.array(f["transform_matrix"])
            for f in json.loads((scene / "transforms.json").read_text())["frames"]}
    names = sorted(ours)
    assert names == sorted(p.name for p in photos.iterdir())  # every photo registered
    a = np.stack([ours[n] for n in names])  # [N, 4, 4] OpenGL c2w, ours
    b = np.stack([known[n] for n in names])
    s, rot, t = umeyama(a[:, :3, 3], b[:, :3, 3])
    centres = s * a[:, :3, 3] @ rot.T + t
    spread = np.linalg.norm(b[:, :3, 3] - b[:, :3, 3].mean(axis=0), axis=1).max()
    position_error = np.linalg.norm(centres - b[:, :3, 3], axis=1) / spread
    rotation_error = [rotation_angle_deg(rot @ a[i, :3, :3], b[i, :3, :3])
                      for i in range(len(names))]
    assert position_error.mean() < 0.01 and position_error.max() < 0.015, position_error
    assert np.mean(rotation_error) < 1.0 and max(rotation_error) < 1.5, rotation_error


@needs_fox
def test_fox_scene_reads_the_same_through_transforms_json_and_colmap(fox_scene):
    from nerfmine.data import load_scene
    from nerfmine.data.colmap import load_colmap

    _, scene_dir = fox_scene
    via_json = load_scene(scene_dir, split="all", decode=False)  # transforms.json wins
    via_colmap = load_colmap(scene_dir / "sparse" / "0", scene_dir / "images", split="all",
                             decode=False)
    assert via_json.dialect == "instant-ngp" and via_colmap.dialect == "colmap"
    assert [p.name for p in via_json.image_paths] == [p.name for p in via_colmap.image_paths]
    np.testing.assert_allclose(via_json.c2w.numpy(), via_colmap.c2w.numpy(), atol=1e-6)
    np.testing.assert_allclose(via_json.intrinsics.numpy(), via_colmap.intrinsics.numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(via_json.distortion.numpy(), via_colmap.distortion.numpy(),
                               atol=1e-7)
    assert via_json.camera_model == via_colmap.camera_model == "opencv"
    assert via_json.aabb_scale == via_colmap.aabb_scale
    assert via_json.sharpness is not None and bool((via_json.sharpness > 0).all())
    # the pre-downscaled copies are the loader's --downscale sizes
    for f in (2, 4, 8):
        with Image.open(scene_dir / f"images_{f}" / via_json.image_paths[0].name) as im:
            assert im.size == (via_json.width // f, via_json.height // f)


@needs_fox
def test_fox_report_preview_and_skip_sfm(fox_scene, capsys):
    photos, scene_dir = fox_scene
    report = json.loads((scene_dir / "process.json").read_text())
    n = len(list(photos.iterdir()))
    assert report["images_total"] == report["images_registered"] == n
    assert report["unregistered"] == [] and report["points"] > 300
    assert 0 < report["mean_reprojection_error_px"] < 1.0
    assert report["matcher"] == "exhaustive" and report["camera_model"] == "SIMPLE_RADIAL"
    assert {"images", "features", "matching", "mapping", "conversion", "preview"} <= set(
        report["stage_seconds"])
    with Image.open(scene_dir / "cameras.png") as im:
        assert im.format == "PNG" and im.width > 500
    # --skip-sfm rewrites the report, transforms.json and the picture from the same model
    before = json.loads((scene_dir / "transforms.json").read_text())
    (scene_dir / "transforms.json").unlink()
    (scene_dir / "cameras.png").unlink()
    capsys.readouterr()
    assert main(["process", str(scene_dir), "--skip-sfm", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{n} of {n} images registered" in out and "cameras.png" in out
    assert json.loads((scene_dir / "transforms.json").read_text()) == before
    assert (scene_dir / "cameras.png").is_file()
    assert set(json.loads((scene_dir / "process.json").read_text())["stage_seconds"]) == {
        "conversion", "preview"}
    # a non-empty scene folder is not overwritten without --overwrite
    assert main(["process", str(photos), "-o", str(scene_dir), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


# ----------------------------------------------------------------------- bad inputs
def _nothing_left(parent: Path, scene: Path, before: set[str]) -> None:
    """No scene folder and no hidden work folder: nothing ``train`` could take for a scene."""
    assert not scene.exists()
    assert {p.name for p in parent.iterdir()} == before


def _fails(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_unreadable_video_is_named(tmp_path, capsys):
    pytest.importorskip("imageio_ffmpeg")
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not a video at all" * 100)
    before = {p.name for p in tmp_path.iterdir()}
    err = _fails(["process", str(video), "-o", str(tmp_path / "scene"), "--quiet"], capsys)
    assert str(video) in err and "cannot read it as a video" in err
    _nothing_left(tmp_path, tmp_path / "scene", before)


@pytest.mark.parametrize(("count", "expected"), [(0, "holds no image files"),
                                                 (1, "holds only 1 image file ")])
def test_empty_folder_and_one_photo_are_refused(tmp_path, capsys, count, expected):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "notes.txt").write_text("not an image")
    for i in range(count):
        Image.fromarray(_texture(32, 32, i)).save(photos / f"{i}.png")
    before = {p.name for p in tmp_path.iterdir()}
    err = _fails(["process", str(photos), "-o", str(tmp_path / "scene")], capsys)
    assert expected in err and str(photos) in err and "at least 3" in err
    _nothing_left(tmp_path, tmp_path / "scene", before)


def test_a_single_image_file_is_refused(tmp_path, capsys):
    image = tmp_path / "one.jpg"
    Image.fromarray(_texture(32, 32)).save(image)
    err = _fails(["process", str(image), "-o", str(tmp_path / "scene")], capsys)
    assert "single image" in err and "folder" in err


def test_images_that_do_not_overlap_register_nothing(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):  # four unrelated textures: nothing to match
        Image.fromarray(_texture(96, 128, seed=10 + i)).save(photos / f"{i}.png")
    before = {p.name for p in tmp_path.iterdir()}
    err = _fails(["process", str(photos), "-o", str(tmp_path / "scene"), "--quiet",
                  "--no-downscaled"], capsys)
    assert "registered none of the 4 images" in err
    assert "overlap" in err and "--matcher" in err and "--camera-model" in err
    _nothing_left(tmp_path, tmp_path / "scene", before)


def test_skip_sfm_without_a_model_and_missing_arguments(tmp_path, capsys):
    err = _fails(["process", str(tmp_path), "--skip-sfm"], capsys)
    assert "no COLMAP model to reuse" in err and "sparse/0" in err
    err = _fails(["process", str(tmp_path)], capsys)
    assert "-o SCENE_DIR" in err


def test_missing_pycolmap_names_the_extra(tmp_path, monkeypatch):
    import sys

    from nerfmine.process.sfm import import_pycolmap

    monkeypatch.setitem(sys.modules, "pycolmap", None)  # import pycolmap -> ImportError
    with pytest.raises(DataError, match=r"nerfmine\[process\]"):
        import_pycolmap()
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(DataError, match=r"nerfmine\[process\]"):
        frames.select_video_frames(tmp_path / "v.mp4", tmp_path, 5, None)


def test_parser_constants_match_the_library():
    from nerfmine.cli import process as cli
    from nerfmine.process import pipeline, sfm

    assert cli.DEFAULT_FRAMES == pipeline.DEFAULT_FRAMES
    assert cli.MATCHERS == sfm.MATCHERS
    assert cli.CAMERA_MODELS == sfm.CAMERA_MODELS


def test_transforms_of_cameras_that_differ_keep_the_lens_model_at_the_top_level(tmp_path):
    """nerfmine's reader picks the lens model from the top-level coefficients: with two
    cameras each frame carries its own intrinsics, and the top level a camera's non-zero
    coefficients, so the scene still reads as "opencv"."""
    import torch

    from nerfmine.process.convert import transforms_dict

    scene = type("Scene", (), dict(
        image_paths=[tmp_path / "images" / "a.jpg", tmp_path / "images" / "b.jpg"],
        c2w=torch.eye(4).expand(2, 4, 4), width=40, height=30, camera_model="opencv",
        intrinsics=torch.tensor([[50.0, 50.0, 20.0, 15.0], [60.0, 60.0, 20.0, 15.0]],
                                dtype=torch.float64),
        distortion=torch.tensor([[0.0] * 6, [0.1, 0, 0, 0, 0, 0]]), scale=0.33,
        offset=(0.5, 0.5, 0.5), aabb_scale=4.0, __len__=lambda self: 2))()
    meta = transforms_dict(scene, tmp_path, {"b.jpg": 12.5})
    assert meta["k1"] == pytest.approx(0.1) and meta["aabb_scale"] == 4
    assert isinstance(meta["aabb_scale"], int)
    a, b = meta["frames"]
    assert a["file_path"] == "images/a.jpg" and a["fl_x"] == 50.0 and a["k1"] == 0.0
    assert b["fl_x"] == 60.0 and b["k1"] == pytest.approx(0.1) and b["sharpness"] == 12.5
    assert "sharpness" not in a
