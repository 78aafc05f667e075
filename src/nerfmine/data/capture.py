"""What the loaders of real captures (transforms.json, COLMAP) share: the splits by hold-out,
missing images, scene placement from the camera poses and building the SceneData."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nerfmine.data.scene_data import SceneData
from nerfmine.errors import DataError

DEFAULT_SCALE = 0.33
DEFAULT_OFFSET = (0.5, 0.5, 0.5)
SPLITS = ("train", "test", "all")
# The largest aabb_scale chosen from a capture's own geometry: instant-ngp's advice for
# unbounded natural scenes is 16 (a run can ask for up to 128 with data.aabb_scale).
MAX_AUTO_AABB_SCALE = 16.0


def check_capture_args(source: str, split: str, downscale, holdout_every, unit: str) -> None:
    """Validate the arguments every capture loader takes; ``source`` says what was given
    ("<path> is a single transforms file"), ``unit`` what is held out ("frame", "image")."""
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise DataError(
            f"downscale must be a whole number >= 1 (1 keeps full resolution), got {downscale!r}."
        )
    if isinstance(holdout_every, bool) or not isinstance(holdout_every, int) or holdout_every < 2:
        raise DataError(f"holdout_every must be a whole number >= 2, got {holdout_every!r}.")
    if split not in SPLITS:
        raise DataError(
            f"{source}: its splits are 'train', 'test' (every {holdout_every}th {unit} after "
            f"sorting by name) and 'all'; got '{split}'."
        )


def handle_missing(where, noun: str, absent: str, n_all: int, missing: list[str],
                   n_found: int, skip_missing: bool, notes: list[str], hint: str) -> None:
    """Stop on items whose image file is missing, or note them when ``skip_missing``.

    ``noun`` names the items for the all-missing message ("frames' images"), ``absent`` the
    missing ones after "N of M" ("frames name images that do not exist").
    """
    if not missing:
        return
    n_miss = len(missing)
    first = ", ".join(missing[:3]) + (" ..." if n_miss > 3 else "")
    if n_found == 0:
        raise DataError(f"{where}: none of the {n_all} {noun} exist (first: {first}); {hint}.")
    if not skip_missing:
        raise DataError(
            f"{where}: {n_miss} of {n_all} {absent} (first: {first}); pass skip_missing=True "
            f"(--skip-missing) to train on the {n_found} that do."
        )
    notes.append(
        f"skipped {n_miss} of {n_all} {absent} (first: {first}); using the {n_found} that do."
    )


def holdout_indices(n: int, split: str, holdout_every: int, where, unit: str) -> list[int]:
    """Indices (into name-sorted items) of a split: "test" every ``holdout_every``-th, "train"
    the rest, "all" everything; an empty split is an error."""
    if split == "all":
        chosen = list(range(n))
    else:
        test = split == "test"
        chosen = [k for k in range(n) if (k % holdout_every == 0) == test]
    if not chosen:
        raise DataError(
            f"{where}: split '{split}' is empty ({n} {unit}s with holdout_every="
            f"{holdout_every}); use split 'all' or more {unit}s."
        )
    return chosen


def capture_scene(images: np.ndarray | torch.Tensor, c2w: np.ndarray, intrinsics: np.ndarray,
                  distortion: np.ndarray, camera_model: str, paths: list[Path], split: str,
                  size: tuple[int, int], scale: float, offset: tuple, aabb_scale: float,
                  dialect: str, notes: list[str]) -> SceneData:
    """A SceneData with per-image intrinsics [N, 4] and distortion [N, 6] (None for a
    pinhole camera); ``fx/fy/cx/cy`` hold the first image's intrinsics. ``images`` may be a
    tensor already (a ``meta`` placeholder when the loader did not decode)."""
    return SceneData(
        images=images if isinstance(images, torch.Tensor) else torch.from_numpy(images),
        c2w=torch.from_numpy(np.ascontiguousarray(c2w, dtype=np.float32)),
        fx=float(intrinsics[0, 0]),
        fy=float(intrinsics[0, 1]),
        cx=float(intrinsics[0, 2]),
        cy=float(intrinsics[0, 3]),
        width=size[0],
        height=size[1],
        image_paths=paths,
        split=split,
        scale=scale,
        offset=offset,
        intrinsics=torch.from_numpy(np.ascontiguousarray(intrinsics, dtype=np.float64)),
        distortion=None
        if camera_model == "pinhole"
        else torch.from_numpy(distortion.astype(np.float32)),
        camera_model=camera_model,
        aabb_scale=aabb_scale,
        dialect=dialect,
        notes=notes,
    )


def pose_centre_and_radius(centres: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre (mean camera position, [3]) and radius (largest camera distance from it) of
    camera positions ``centres`` [M, 3]; radius 1 when the cameras coincide."""
    centres = np.asarray(centres, dtype=np.float64)
    centre = centres.mean(axis=0)
    radius = float(np.linalg.norm(centres - centre, axis=1).max())
    if not np.isfinite(radius) or radius < 1e-12:
        radius = 1.0
    return centre, radius


def aabb_scale_for_extent(extent: float) -> float:
    """The smallest power of two ``s`` whose box, ``0.5 +- s / 2`` in unit-cube coordinates,
    holds points ``extent`` (normalised world units, at scale 0.33) from the centre along every
    axis; at least 1, at most :data:`MAX_AUTO_AABB_SCALE`."""
    need = 2.0 * DEFAULT_SCALE * float(extent)
    scale = 1.0
    while scale < need and scale < MAX_AUTO_AABB_SCALE:
        scale *= 2.0
    return scale
