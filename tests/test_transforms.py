"""Real-capture loader: instant-ngp and nerfstudio transforms.json, hold-out, missing images."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerfmine.data import load_scene
from nerfmine.errors import DataError

W, H = 8, 6


def shared_data() -> Path:
    env = os.environ.get("NERFMINE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def pose(i: int) -> list:
    m = np.eye(4)
    m[:3, 3] = [i * 0.1, 0.0, 2.0]
    return m.tolist()


def write_capture(root: Path, meta: dict, n: int, ext: str = "png", order=None, skip=()) -> Path:
    """Write n tiny images (except those in ``skip``) and transforms.json listing all n."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i in order if order is not None else range(n):
        rel = f"images/{i:04d}.{ext}"
        if i not in skip:
            img = np.full((H, W, 3), i * 10 % 256, dtype=np.uint8)
            Image.fromarray(img).save(root / rel)
        frames.append({"file_path": rel, "sharpness": 30.0, "transform_matrix": pose(i)})
    meta = {**meta, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    return root / "transforms.json"


NGP = {
    "fl_x": 10.0,
    "fl_y": 11.0,
    "cx": 4.1,
    "cy": 2.9,
    "w": W,
    "h": H,
    "k1": 0.01,
    "k2": -0.02,
    "p1": 1e-3,
    "p2": -1e-3,
    "aabb_scale": 4,
}


def test_instant_ngp_dialect_and_holdout(tmp_path):
    order = list(reversed(range(20)))  # sorting by file name must undo this
    path = write_capture(tmp_path, NGP, 20, ext="jpg", order=order)
    test = load_scene(path, "test")
    train = load_scene(tmp_path, "train")  # the folder works too
    every = load_scene(path, "all")
    names = lambda s: [int(p.stem) for p in s.image_paths]  # noqa: E731
    assert names(test) == [0, 8, 16]
    assert names(train) == [i for i in range(20) if i % 8]
    assert names(every) == list(range(20))
    assert names(load_scene(path, "test", holdout_every=5)) == [0, 5, 10, 15]
    assert test.dialect == "instant-ngp" and test.camera_model == "opencv"
    assert test.aabb_scale == 4.0 and test.scale == 0.33 and test.offset == (0.5, 0.5, 0.5)
    assert test.intrinsics.shape == (3, 4) and test.distortion.shape == (3, 6)
    assert torch.allclose(test.intrinsics[0].float(), torch.tensor([10.0, 11.0, 4.1, 2.9]))
    assert torch.allclose(test.distortion[0], torch.tensor([0.01, -0.02, 0, 0, 1e-3, -1e-3]))
    assert torch.allclose(test.c2w[1], torch.tensor(pose(8), dtype=torch.float32))
    assert test.images.shape == (3, H, W, 4) and test.images.dtype == torch.uint8
    assert test.notes == []


def test_scale_offset_from_file_and_downscale(tmp_path):
    meta = {**NGP, "scale": 0.5, "offset": [0.1, 0.2, 0.3], "w": 8, "h": 6}
    path = write_capture(tmp_path, meta, 3)
    s = load_scene(path, "all", downscale=2)
    assert s.scale == 0.5 and s.offset == (0.1, 0.2, 0.3)
    assert (s.width, s.height) == (4, 3)
    assert torch.allclose(s.intrinsics[0].float(), torch.tensor([5.0, 5.5, 2.05, 1.45]))
    assert (s.fx, s.cx) == pytest.approx((5.0, 2.05))
    unit = s.cameras().transformed(s.scale, s.offset).c2w  # [N, 4, 4]
    assert torch.allclose(unit[0, :3, 3], torch.tensor([0.1, 0.2, 1.3]))


def test_pinhole_from_camera_angle(tmp_path):
    path = write_capture(tmp_path, {"camera_angle_x": 0.9}, 2)
    s = load_scene(path, "all")
    assert s.camera_model == "pinhole" and s.distortion is None and s.aabb_scale == 1.0
    fx = 0.5 * W / math.tan(0.45)
    assert torch.allclose(s.intrinsics[1].float(), torch.tensor([fx, fx, W / 2, H / 2]))


def test_nerfstudio_dialect_per_frame_intrinsics(tmp_path):
    path = write_capture(
        tmp_path,
        {
            "camera_model": "OPENCV_FISHEYE",
            "k1": 0.05,
            "w": W,
            "h": H,
            "applied_transform": np.eye(4)[:3].tolist(),
        },
        3,
    )
    meta = json.loads(path.read_text())
    for i, f in enumerate(meta["frames"]):
        f.update({"fl_x": 9.0 + i, "fl_y": 9.5 + i, "cx": 4.0, "cy": 3.0, "k2": 0.01 * i})
    path.write_text(json.dumps(meta))
    s = load_scene(path, "all")
    assert s.dialect == "nerfstudio" and s.camera_model == "fisheye"
    assert torch.allclose(s.intrinsics[:, 0].float(), torch.tensor([9.0, 10.0, 11.0]))
    assert torch.allclose(s.intrinsics[2].float(), torch.tensor([11.0, 11.5, 4.0, 3.0]))
    assert torch.allclose(s.distortion[:, 1], torch.tensor([0.0, 0.01, 0.02]))
    assert torch.allclose(s.distortion[:, 0], torch.tensor([0.05] * 3))
    assert any("applied_transform" in n for n in s.notes)
    # PINHOLE and OPENCV names map too
    meta["camera_model"] = "PINHOLE"
    path.write_text(json.dumps(meta))
    assert load_scene(path, "all").camera_model == "pinhole"
    meta["camera_model"] = "EQUIRECTANGULAR"
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="EQUIRECTANGULAR"):
        load_scene(path, "all")


def test_inconsistent_intrinsics_name_the_frame(tmp_path):
    path = write_capture(tmp_path, {}, 3)
    meta = json.loads(path.read_text())
    for f in meta["frames"]:
        f["fl_x"] = 10.0
    del meta["frames"][1]["fl_x"]  # no focal length anywhere for this frame
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"frames\[1\] \('images/0001.png'\) has no focal length"):
        load_scene(path, "all")
    meta["frames"][1]["fl_x"] = 10.0
    meta["frames"][2]["w"] = W * 2  # says 16 wide, the image is 8
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"frames\[2\] \('images/0002.png'\) has w=16"):
        load_scene(path, "test")  # reported whatever the split


def test_missing_images_error_and_skip(tmp_path):
    path = write_capture(tmp_path, NGP, 12, skip={3, 5, 7})
    with pytest.raises(
        DataError,
        match=r"3 of 12 frames name images that do not exist "
        r"\(first: images/0003.png, images/0005.png, "
        r"images/0007.png\).*skip_missing=True.*the 9 that do",
    ):
        load_scene(path)
    s = load_scene(path, "all", skip_missing=True)
    assert len(s) == 9 and "3 of 12" in s.notes[0]
    # hold-out over the frames that exist: sorted index 0 and 8 of [0,1,2,4,6,8,9,10,11]
    assert [int(p.stem) for p in load_scene(path, "test", skip_missing=True).image_paths] == [
        0,
        11,
    ]


def test_bad_arguments(tmp_path):
    path = write_capture(tmp_path, NGP, 3)
    with pytest.raises(DataError, match="'train', 'test'"):
        load_scene(path, "val")
    with pytest.raises(DataError, match="does not exist"):
        load_scene(tmp_path / "nope.json")
    with pytest.raises(DataError, match="neither transforms.json"):
        load_scene(tmp_path / "images")


def test_blender_folder_is_delegated(tmp_path):
    (tmp_path / "r_0.png").parent.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((H, W, 4), dtype=np.uint8)).save(tmp_path / "r_0.png")
    meta = {"camera_angle_x": 0.7, "frames": [{"file_path": "./r_0", "transform_matrix": pose(0)}]}
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    s = load_scene(tmp_path, "train")
    assert s.dialect == "blender" and len(s) == 1 and s.intrinsics is None


FOX = shared_data() / "fox"
needs_fox = pytest.mark.skipif(
    not (FOX / "transforms.json").is_file(),
    reason=f"fox capture not found at {FOX} (set NERFMINE_SHARED_DATA)",
)


@needs_fox
def test_fox_holdout_split():
    train = load_scene(FOX, "train", downscale=4)
    test = load_scene(FOX / "transforms.json", "test", downscale=4)
    assert (len(train), len(test)) == (43, 7)
    assert (train.width, train.height) == (135, 240)
    assert train.dialect == "instant-ngp" and train.camera_model == "opencv"
    assert train.aabb_scale == 4.0
    assert train.intrinsics.shape == (43, 4) and train.distortion.shape == (43, 6)
    assert train.intrinsics[0, 0].item() == pytest.approx(687.76 / 4, rel=1e-6)
    assert train.distortion[0, 0].item() == pytest.approx(0.0578421, rel=1e-6)
    assert not set(train.image_paths) & set(test.image_paths)


@needs_fox
def test_fox_all_frames_missing_images():
    path = FOX / "transforms_all_frames.json"
    with pytest.raises(DataError, match="17 of 67"):
        load_scene(path, downscale=8)
    s = load_scene(path, "all", downscale=8, skip_missing=True)
    assert len(s) == 50 and "17 of 67" in s.notes[0]
    assert len(load_scene(path, "test", downscale=8, skip_missing=True)) == 7


def test_the_run_records_the_scale_and_offset_it_applied(tmp_path):
    """Renders and exports read config.data.scale/offset: the trainer records the file's."""
    import json

    from nerfmine.config import make_config
    from nerfmine.trainer import Trainer

    meta = {**NGP, "scale": 0.5, "offset": [0.1, 0.2, 0.3], "w": 8, "h": 6}
    path = write_capture(tmp_path, meta, 9)
    config = make_config("cpu", {"data": {"path": str(path)}, "train": {"max_steps": 1},
                                 "model": {"log2_table_size": 10, "n_levels": 4,
                                           "max_resolution": 64},
                                 "occupancy": {"resolution": 16}})
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.config.data.scale == 0.5 and trainer.config.data.offset == (0.1, 0.2, 0.3)
    trainer.config.save(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["scale"] == 0.5 and saved["data"]["offset"] == [0.1, 0.2, 0.3]


def test_nerfstudio_file_without_scale_is_centred_from_the_poses(tmp_path):
    """nerfstudio's files carry no scale/offset: the camera centres' mean goes to the cube's
    centre and the farthest camera to 0.33 from it, for every split alike."""
    path = write_capture(tmp_path, {"camera_model": "OPENCV", "fl_x": 9.0, "w": W, "h": H}, 9)
    meta = json.loads(path.read_text())
    rng = np.random.default_rng(0)
    for f in meta["frames"]:
        m = np.eye(4)
        m[:3, 3] = rng.normal(size=3) * 5.0 + [10.0, -3.0, 7.0]
        f["transform_matrix"] = m.tolist()
    path.write_text(json.dumps(meta))
    train, test = load_scene(path, "train"), load_scene(path, "test")
    assert train.scale == test.scale and tuple(train.offset) == tuple(test.offset)
    poses = torch.cat([split.cameras().transformed(split.scale, split.offset).c2w
                       for split in (train, test)])  # [9, 4, 4]
    everything = poses[:, :3, 3].double()  # [9, 3]
    torch.testing.assert_close(everything.mean(0), torch.full((3,), 0.5, dtype=torch.float64),
                               rtol=0, atol=1e-5)
    assert float((everything - 0.5).norm(dim=-1).max()) == pytest.approx(0.33, abs=1e-5)
    assert any("centred at the mean camera position" in n for n in train.notes)
    # A file that gives its own scale and offset keeps them.
    meta["scale"], meta["offset"] = 0.1, [0.2, 0.3, 0.4]
    path.write_text(json.dumps(meta))
    kept = load_scene(path, "all")
    assert kept.scale == pytest.approx(0.1) and tuple(kept.offset) == pytest.approx((0.2, 0.3, 0.4))


def test_min_sharpness_drops_blurry_frames_before_the_holdout(tmp_path):
    path = write_capture(tmp_path, {"fl_x": 9.0, "w": W, "h": H}, 10)
    meta = json.loads(path.read_text())
    for i, f in enumerate(meta["frames"]):
        f["sharpness"] = float(i * 10)  # frames 0..2 are below 25
    path.write_text(json.dumps(meta))
    everything = load_scene(path, "all")
    assert everything.sharpness.tolist() == [float(i * 10) for i in range(10)]
    kept = load_scene(path, "all", min_sharpness=25.0)
    assert [p.name for p in kept.image_paths] == [f"{i:04d}.png" for i in range(3, 10)]
    assert any("kept 7 of 10 frames" in n for n in kept.notes)
    test = load_scene(path, "test", min_sharpness=25.0)  # every 8th of the 7 kept frames
    assert [p.name for p in test.image_paths] == ["0003.png"]
    with pytest.raises(DataError, match="range from 0 to 90"):
        load_scene(path, "all", min_sharpness=1000.0)
    meta["frames"][4]["sharpness"] = "sharp"
    path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"frames\[4\] 'sharpness'"):
        load_scene(path, "all")
    for f in meta["frames"]:
        f.pop("sharpness")
    path.write_text(json.dumps(meta))
    assert load_scene(path, "all").sharpness is None
    with pytest.raises(DataError, match="no frame has a 'sharpness'"):
        load_scene(path, "all", min_sharpness=1.0)


def test_min_sharpness_is_refused_for_blender_scenes():
    from nerfmine.data.demo import demo_scene_path

    with pytest.raises(DataError, match="min-sharpness"):
        load_scene(demo_scene_path(), "train", min_sharpness=1.0)
