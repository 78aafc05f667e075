"""Blender-format loader: happy paths, downscaling, every bad-input message, the demo scene."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerfmine.data.blender import load_blender
from nerfmine.data.demo import demo_scene_path
from nerfmine.data.files import available_splits
from nerfmine.data.scene_data import SceneData
from nerfmine.errors import DataError

ANGLE = 0.69


def shared_data() -> Path:
    env = os.environ.get("NERFMINE_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def pixels(i: int, w: int, h: int, channels: int = 4) -> np.ndarray:
    """A deterministic image that differs per frame: [H, W, C] uint8."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack(
        [
            (xx * 10 + i) % 256,
            (yy * 20 + i) % 256,
            (xx + yy + 7 * i) % 256,
            np.full_like(xx, 200 - i),
        ],
        axis=-1,
    )
    return img[..., :channels].astype(np.uint8)


def c2w_of(i: int) -> list[list[float]]:
    m = np.eye(4)
    m[:3, 3] = [i, 2.0 * i, -1.0 - i]
    return m.tolist()


def write_scene(
    root: Path,
    split: str = "train",
    n: int = 3,
    w: int = 8,
    h: int = 6,
    ext: bool = False,
    channels: int = 4,
    **meta_extra,
) -> Path:
    """Write a tiny valid scene split under ``root``; returns ``root``."""
    (root / split).mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        Image.fromarray(pixels(i, w, h, channels)).save(root / split / f"r_{i}.png")
        rel = f"./{split}/r_{i}" + (".png" if ext else "")
        frames.append({"file_path": rel, "transform_matrix": c2w_of(i)})
    meta = {"camera_angle_x": ANGLE, "frames": frames, **meta_extra}
    (root / f"transforms_{split}.json").write_text(json.dumps(meta))
    return root


def edit_meta(root: Path, fn, split: str = "train") -> None:
    path = root / f"transforms_{split}.json"
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


def load_error(root, split="train", downscale=1) -> str:
    with pytest.raises(DataError) as info:
        load_blender(root, split, downscale)
    return str(info.value)


# ----- happy paths ---------------------------------------------------------------------------


def test_tiny_scene_loads_exactly(tmp_path):
    write_scene(tmp_path, ext=True)
    scene = load_blender(tmp_path, "train")
    assert isinstance(scene, SceneData) and len(scene) == 3
    assert scene.images.dtype == torch.uint8 and scene.images.shape == (3, 6, 8, 4)
    for i in range(3):
        assert np.array_equal(scene.images[i].numpy(), pixels(i, 8, 6))
        assert torch.equal(scene.c2w[i], torch.tensor(c2w_of(i), dtype=torch.float32))
    assert scene.c2w.dtype == torch.float32
    fx = 0.5 * 8 / math.tan(0.5 * ANGLE)
    assert scene.fx == pytest.approx(fx) and scene.fy == pytest.approx(fx)
    assert (scene.cx, scene.cy, scene.width, scene.height) == (4.0, 3.0, 8, 6)
    assert scene.image_paths == [tmp_path / "train" / f"r_{i}.png" for i in range(3)]
    assert scene.split == "train"


def test_extensionless_file_path_and_rgb_gets_opaque_alpha(tmp_path):
    write_scene(tmp_path, ext=False, channels=3)
    scene = load_blender(str(tmp_path), "train")
    assert scene.image_paths[1] == tmp_path / "train" / "r_1.png"
    assert (scene.images[..., 3] == 255).all()
    assert np.array_equal(scene.images[2, ..., :3].numpy(), pixels(2, 8, 6, 3))


def test_camera_angle_y_sets_fy(tmp_path):
    write_scene(tmp_path, camera_angle_y=0.5)
    scene = load_blender(tmp_path, "train")
    assert scene.fy == pytest.approx(0.5 * 6 / math.tan(0.25))
    assert scene.fx == pytest.approx(0.5 * 8 / math.tan(0.5 * ANGLE))


def test_cameras_to_the_unit_cube_map_translation_only(tmp_path):
    write_scene(tmp_path)
    scene = load_blender(tmp_path, "train")
    unit = scene.cameras().transformed(scene.scale, scene.offset).c2w
    assert torch.equal(unit[:, :3, :3], scene.c2w[:, :3, :3])
    assert torch.allclose(unit[2, :3, 3], torch.tensor([2.0, 4.0, -3.0]) * 0.33 + 0.5)
    assert torch.equal(unit[:, 3], scene.c2w[:, 3])
    assert scene.c2w[2, 0, 3] == 2.0  # the original is untouched


def test_downscale_box_averages_and_scales_intrinsics(tmp_path):
    write_scene(tmp_path, w=9, h=6)  # odd width: 9 // 2 = 4
    full = load_blender(tmp_path, "train")
    half = load_blender(tmp_path, "train", downscale=2)
    assert half.images.shape == (3, 3, 4, 4) and (half.width, half.height) == (4, 3)
    assert half.fx == pytest.approx(full.fx * 4 / 9) and half.fy == pytest.approx(full.fy * 3 / 6)
    assert (half.cx, half.cy) == (2.0, 1.5)

    write_scene(tmp_path / "even", w=8, h=6)
    even = load_blender(tmp_path / "even", "train", downscale=2)
    src = pixels(1, 8, 6).astype(np.float64)
    want = src.reshape(3, 2, 4, 2, 4).mean(axis=(1, 3))  # mean of each 2x2 block
    assert np.abs(even.images[1].numpy() - want).max() <= 1
    assert even.fx == pytest.approx(0.5 * 4 / math.tan(0.5 * ANGLE))


def test_available_splits(tmp_path):
    write_scene(tmp_path, "test")
    write_scene(tmp_path, "train")
    write_scene(tmp_path, "val")
    assert available_splits(tmp_path) == ["train", "val", "test"]


# ----- bad inputs ----------------------------------------------------------------------------


def test_missing_data_path(tmp_path):
    msg = load_error(tmp_path / "nope")
    assert "nope" in msg and "does not exist" in msg
    (tmp_path / "file").write_text("x")
    assert "not a folder" in load_error(tmp_path / "file")


def test_missing_split_lists_existing(tmp_path):
    write_scene(tmp_path, "train")
    write_scene(tmp_path, "test")
    msg = load_error(tmp_path, "val")
    assert "transforms_val.json" in msg and "train, test" in msg
    assert "none" in load_error(tmp_path / "train", "train")


def test_malformed_json_names_line_and_column(tmp_path):
    write_scene(tmp_path)
    (tmp_path / "transforms_train.json").write_text('{"camera_angle_x": 0.5,\n  "frames": [,]}')
    msg = load_error(tmp_path)
    assert "transforms_train.json" in msg and "line 2" in msg and "column" in msg


@pytest.mark.parametrize("key", ["camera_angle_x", "frames"])
def test_missing_top_level_key(tmp_path, key):
    write_scene(tmp_path)
    edit_meta(tmp_path, lambda m: m.pop(key))
    msg = load_error(tmp_path)
    assert f"'{key}'" in msg and "transforms_train.json" in msg


def test_bad_camera_angle(tmp_path):
    write_scene(tmp_path)
    edit_meta(tmp_path, lambda m: m.update(camera_angle_x="wide"))
    assert "camera_angle_x" in load_error(tmp_path)


@pytest.mark.parametrize("key", ["file_path", "transform_matrix"])
def test_missing_frame_key(tmp_path, key):
    write_scene(tmp_path)
    edit_meta(tmp_path, lambda m: m["frames"][1].pop(key))
    msg = load_error(tmp_path)
    assert f"'{key}'" in msg and "frames[1]" in msg


def test_missing_image(tmp_path):
    write_scene(tmp_path)
    (tmp_path / "train" / "r_2.png").unlink()
    msg = load_error(tmp_path)
    assert "frames[2]" in msg and "./train/r_2" in msg and "not found" in msg


def test_corrupt_and_truncated_images(tmp_path):
    write_scene(tmp_path)
    path = tmp_path / "train" / "r_1.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated PNG
    msg = load_error(tmp_path)
    assert "r_1.png" in msg and "corrupt" in msg
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)  # a PNG signature, then junk
    assert "r_1.png" in load_error(tmp_path)


def test_non_image_file(tmp_path):
    write_scene(tmp_path)
    (tmp_path / "train" / "notes.txt").write_text("hello, not a picture")
    edit_meta(tmp_path, lambda m: m["frames"][0].update(file_path="./train/notes.txt"))
    msg = load_error(tmp_path)
    assert "notes.txt" in msg and "not an image" in msg


@pytest.mark.parametrize(
    "matrix, words",
    [
        (np.eye(4)[:3].tolist(), "[3, 4]"),
        ([[1, 0, 0, 0], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "4x4"),
        ("identity", "4x4"),
        ([[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "NaN"),
        ([[1, 0, 0, 0], [0, 1, 0, float("inf")], [0, 0, 1, 0], [0, 0, 0, 1]], "inf"),
    ],
)
def test_bad_transform(tmp_path, matrix, words):
    write_scene(tmp_path)
    edit_meta(tmp_path, lambda m: m["frames"][2].update(transform_matrix=matrix))
    msg = load_error(tmp_path)
    assert "frames[2]" in msg and "./train/r_2" in msg and words in msg


def test_mixed_image_sizes(tmp_path):
    write_scene(tmp_path)
    Image.fromarray(pixels(0, 5, 5)).save(tmp_path / "train" / "r_2.png")
    msg = load_error(tmp_path)
    assert "8x6" in msg and "5x5" in msg and "r_0.png" in msg and "r_2.png" in msg


def test_empty_split(tmp_path):
    write_scene(tmp_path)
    edit_meta(tmp_path, lambda m: m.update(frames=[]))
    msg = load_error(tmp_path)
    assert "empty" in msg and "transforms_train.json" in msg


@pytest.mark.parametrize("downscale", [0, -2, 2.0])
def test_bad_downscale(tmp_path, downscale):
    write_scene(tmp_path)
    assert "downscale" in load_error(tmp_path, downscale=downscale)


def test_downscale_larger_than_image(tmp_path):
    write_scene(tmp_path, w=8, h=6)
    load_blender(tmp_path, "train", downscale=6)  # 8x6 -> 1x1 is still an image
    msg = load_error(tmp_path, downscale=7)
    assert "downscale=7" in msg and "8x6" in msg


# ----- packaged and shared data --------------------------------------------------------------


def test_demo_scene():
    root = demo_scene_path()
    assert (root / "ATTRIBUTION.md").is_file()
    assert "CC BY 3.0" in (root / "ATTRIBUTION.md").read_text()
    assert available_splits(root) == ["train", "test"]
    train = load_blender(root, "train")
    test = load_blender(root, "test")
    assert train.images.shape == (100, 100, 100, 4) and test.images.shape == (25, 100, 100, 4)
    assert train.fx == pytest.approx(0.5 * 100 / math.tan(0.5 * 0.6911112070083618))
    assert test.image_paths[24].name == "r_24.png"
    # the lego sits inside the unit cube: cameras look at it from outside, at ~4 world units
    dist = train.c2w[:, :3, 3].norm(dim=-1)
    assert dist.min() > 3.5 and dist.max() < 4.5
    alpha = train.images[..., 3]
    assert (alpha == 0).float().mean() > 0.3 and (alpha == 255).any()


def test_lego_400_matches_demo():
    root = shared_data() / "lego_400"
    if not (root / "transforms_train.json").is_file():
        pytest.skip(f"shared data is absent ({root}); set NERFMINE_SHARED_DATA to its folder")
    full = load_blender(root, "train")
    assert full.images.shape == (100, 400, 400, 4)
    assert full.fx == pytest.approx(0.5 * 400 / math.tan(0.5 * 0.6911112070083618))
    demo = load_blender(demo_scene_path(), "train")
    assert torch.equal(full.c2w, demo.c2w)
    small = load_blender(root, "train", downscale=4)
    assert small.fx == pytest.approx(demo.fx) and small.cx == demo.cx
    assert torch.equal(small.images, demo.images)
