"""A processed scene's COLMAP model as nerfmine reads it: the instant-ngp ``transforms.json``
and the model's statistics for the report.

The transforms.json is written from what :func:`nerfmine.data.colmap.load_colmap` computes (its
OpenGL poses in its normalised world, intrinsics, distortion, ``scale``, ``offset`` and the
``aabb_scale`` it chooses from the sparse points), so ``nerfmine train SCENE`` sees the same
scene whether it reads the transforms.json (which wins when both are present, and needs no
pycolmap) or the COLMAP model. Frames carry their own intrinsics (a photo set may have several
cameras) and the ``sharpness`` of their image, which ``--min-sharpness`` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerfmine.data.capture import pose_centre_and_radius
from nerfmine.data.colmap import load_colmap
from nerfmine.data.scene_data import SceneData
from nerfmine.process.sfm import import_pycolmap

_DISTORTION_KEYS = {"opencv": ("k1", "k2", "k3", "p1", "p2"),
                    "fisheye": ("k1", "k2", "k3", "k4")}
_ALL_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")  # SceneData.distortion's columns


@dataclass(frozen=True)
class ModelSummary:
    """What the report says about a COLMAP model, in nerfmine's normalised world."""

    registered: list[str]  # image names, sorted
    unregistered: list[str]  # image files of images/ without a pose, sorted
    points: np.ndarray  # [P, 3] sparse points, normalised world
    mean_reprojection_error: float  # pixels
    scene: SceneData  # load_colmap's split "all", images not decoded


def read_model(scene_dir: Path, image_names: list[str]) -> ModelSummary:
    """Read ``scene_dir/sparse/0`` and ``scene_dir/images`` as ``nerfmine train`` does (raises
    its DataErrors), plus the sparse points moved into the same normalised world."""
    pycolmap = import_pycolmap()
    scene = load_colmap(scene_dir / "sparse" / "0", scene_dir / "images", split="all",
                        decode=False)
    rec = pycolmap.Reconstruction(str(scene_dir / "sparse" / "0"))
    registered = sorted(rec.images[i].name for i in rec.reg_image_ids())
    # The loader's centre and radius, from the same camera centres with the same function.
    raw_centres = []
    for i in rec.reg_image_ids():
        pose = rec.images[i].cam_from_world
        pose = pose() if callable(pose) else pose
        m = pose.matrix()  # [3, 4] world -> camera
        raw_centres.append(-m[:, :3].T @ m[:, 3])
    centre, radius = pose_centre_and_radius(np.array(raw_centres))
    xyz = np.array([p.xyz for p in rec.points3D.values()]).reshape(-1, 3)
    points = (xyz - centre) / radius  # [P, 3]
    error = rec.compute_mean_reprojection_error() if rec.num_points3D() else math.nan
    reg = set(registered)
    return ModelSummary(registered, sorted(n for n in image_names if n not in reg), points,
                        float(error), scene)


def transforms_dict(scene: SceneData, root: Path,
                    sharpness: dict[str, float] | None = None) -> dict:
    """The instant-ngp transforms.json of ``scene`` (a :func:`load_colmap` result) with
    ``file_path`` relative to ``root``; ``sharpness`` per image name where known.

    Intrinsics and distortion shared by every image go to the top level; when cameras differ
    each frame carries its own. The distortion coefficients are always also at the top level
    (from a camera that has non-zero ones), so that readers which choose the lens model from
    the top-level keys only (older instant-ngp tools) see the lens too; nerfmine's reader
    also reads per-frame coefficients."""
    keys = _DISTORTION_KEYS.get(scene.camera_model, ())
    intrinsics = [tuple(v) for v in scene.intrinsics.tolist()]
    distortion = ([tuple(v) for v in scene.distortion.tolist()]
                  if scene.distortion is not None else [(0.0,) * 6] * len(scene))
    shared = len(set(intrinsics)) == 1 and len(set(distortion)) == 1
    lens = max(distortion, key=lambda d: max(abs(v) for v in d))  # a camera with distortion

    def camera(intr: tuple, dist: tuple) -> dict:
        coeffs = dict(zip(_ALL_KEYS, dist))
        return {"fl_x": intr[0], "fl_y": intr[1], "cx": intr[2], "cy": intr[3],
                **{k: coeffs[k] for k in keys}}

    frames = []
    for path, c2w, intr, dist in zip(scene.image_paths, scene.c2w.tolist(), intrinsics,
                                     distortion):
        frame = {"file_path": Path(path).relative_to(root).as_posix(), "transform_matrix": c2w}
        if not shared:
            frame.update(camera(intr, dist))
        if sharpness and Path(path).name in sharpness:
            frame["sharpness"] = sharpness[Path(path).name]
        frames.append(frame)
    meta = camera(intrinsics[0], distortion[0]) if shared else {
        k: v for k, v in camera(intrinsics[0], lens).items() if k in keys}
    meta.update({"w": scene.width, "h": scene.height})
    if scene.camera_model == "fisheye":
        meta["is_fisheye"] = True
    meta.update({"scale": scene.scale, "offset": [float(v) for v in scene.offset],
                 "aabb_scale": _whole(scene.aabb_scale), "frames": frames})
    return meta


def _whole(value: float) -> float | int:
    """A power-of-two aabb_scale as the integer instant-ngp's own reader expects."""
    return int(value) if float(value).is_integer() else float(value)
