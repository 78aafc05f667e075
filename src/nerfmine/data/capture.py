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


# Camera positions closer together than this, relative to their magnitude (at least 1), are
# one position: float64 positions (LLFF, COLMAP) agree to ~1e-12 when they are meant to be
# equal; float32 ones (transforms files) to a few units of float32's 1.2e-7.
COINCIDE_FLOAT64 = 1e-9
COINCIDE_FLOAT32 = 1e-6


def positions_coincide(centres: np.ndarray, resolution: float = COINCIDE_FLOAT64) -> bool:
    """Whether the camera positions ``centres`` [M, 3] are all one point, to ``resolution``
    relative to their magnitude (at least 1)."""
    centres = np.asarray(centres, dtype=np.float64)
    spread = float(np.linalg.norm(centres - centres.mean(axis=0), axis=1).max())
    return spread <= resolution * max(1.0, float(np.abs(centres).max()))


def pose_centre_and_radius(centres: np.ndarray, resolution: float = COINCIDE_FLOAT64
                           ) -> tuple[np.ndarray, float]:
    """Centre (mean camera position, [3]) and radius (largest camera distance from it) of
    camera positions ``centres`` [M, 3]; radius 1 when the cameras coincide (see
    :func:`positions_coincide`): the world keeps its units, and nothing divides by a spread
    that is zero or rounding noise."""
    centres = np.asarray(centres, dtype=np.float64)
    centre = centres.mean(axis=0)
    radius = float(np.linalg.norm(centres - centre, axis=1).max())
    if not np.isfinite(radius) or positions_coincide(centres, resolution):
        radius = 1.0
    return centre, radius


def _point(p) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in p) + ")"


def coincidence_note(c2w: np.ndarray, source, unit: str,
                     resolution: float = COINCIDE_FLOAT64) -> str | None:
    """A note when the poses ``c2w`` [M, 4, 4] (M >= 2) all stand at one position, or share
    one pose outright; None otherwise. Nothing breaks (the normalisation keeps radius 1), but
    training cannot recover the scene's geometry from views without parallax."""
    c2w = np.asarray(c2w, dtype=np.float64)
    n = len(c2w)
    if n < 2 or not positions_coincide(c2w[:, :3, 3], resolution):
        return None
    where = _point(c2w[:, :3, 3].mean(axis=0))
    if np.abs(c2w[:, :3, :3] - c2w[0, :3, :3]).max() <= 1e-5:
        return (f"{source}: all {n} {unit}s share one pose (the same position {where} and "
                "orientation): every image is seen from one viewpoint, so training cannot "
                "recover the scene's geometry and will only fit a flat picture. If the "
                "views were taken from different places, the poses were not exported (a "
                "tracker that lost its pose writes one matrix for every frame): re-run the "
                "pose estimation (e.g. COLMAP, then colmap2nerf.py or ns-process-data).")
    return (f"{source}: all {n} {unit}s stand at one position {where}, only turned (a "
            "panorama from a tripod?): with no parallax between the views, training cannot "
            "recover depth; the scene keeps its world units around that point. Capture from "
            "several positions to reconstruct geometry.")


# A camera farther than this from the unit cube's centre (in unit-cube units, the box being at
# most 128 wide) cannot be used: float32, in which rays are computed, resolves positions there
# to only 1e-3 of the cube, and the modelled box is a speck in its image.
MAX_CAMERA_REACH = 1e4
# How far float32 may move a camera in the unit cube (its width is 1) before the placement is
# noted (PLACEMENT_NOTE) or refused (PLACEMENT_ERROR, 1% of the cube: several pixels).
PLACEMENT_NOTE = 1e-3
PLACEMENT_ERROR = 1e-2


def check_camera_placement(translations: np.ndarray, c2w32: np.ndarray, scale: float,
                           offset, names: list[str], source, fix: str,
                           notes: list[str]) -> None:
    """Check that the cameras land in the unit cube where float32 can place them.

    ``translations`` [M, 3] are the camera positions in world units as the file gives them
    (float64), ``c2w32`` [M, 4, 4] the float32 poses the scene keeps, mapped by ``x * scale +
    offset`` in float32 (:meth:`nerfmine.cameras.Cameras.transformed`); ``names`` names each
    camera, ``source`` the file and ``fix`` says how to choose the mapping in that format.
    A camera beyond :data:`MAX_CAMERA_REACH` from the cube's centre (translations so large, or
    a scale so large, that float32 overflows or cannot resolve the cube) is a DataError, as is
    a float32 placement off by more than :data:`PLACEMENT_ERROR` (world coordinates far from
    the origin compared with the cameras' spread); a smaller error above
    :data:`PLACEMENT_NOTE` is noted."""
    t = np.asarray(translations, dtype=np.float64)
    off = np.asarray(offset, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        unit = t * float(scale) + off  # [M, 3]
        reach = np.linalg.norm(unit - 0.5, axis=1)
    bad = np.flatnonzero(~(reach <= MAX_CAMERA_REACH))
    centre, radius = pose_centre_and_radius(t)
    if len(bad):
        k = int(bad[0])
        where = (f"{source}: the camera of {names[k]} (position {_point(t[k])}) lands at "
                 f"{_point(unit[k])} in the unit cube (x * scale {float(scale):.4g} + offset "
                 f"{_point(off)}), {float(reach[k]):.3g} from its centre; beyond "
                 f"{MAX_CAMERA_REACH:g}, rays in float32 cannot resolve the modelled box "
                 "(0.5 +- aabb_scale / 2)")
        if len(bad) < len(t):
            raise DataError(f"{where}. {len(bad)} of {len(t)} cameras are that far and the "
                            "others are not, so those poses are wrong: remove their frames or "
                            "fix their translations.")
        raise DataError(
            f"{where}, and so do all {len(t)} cameras: the poses' units do not fit the scale. "
            f"{fix[0].upper()}{fix[1:]}; for these cameras, scale "
            f"{DEFAULT_SCALE / radius:.4g} and offset "
            f"{_point(np.asarray(DEFAULT_OFFSET) - centre * DEFAULT_SCALE / radius)} put their "
            "mean position at the cube's centre and the farthest at 0.33 from it.")
    with torch.no_grad():
        placed = (torch.from_numpy(np.ascontiguousarray(c2w32[:, :3, 3], dtype=np.float32))
                  * float(scale) + torch.as_tensor(off, dtype=torch.float32)).double().numpy()
    error = float(np.abs(placed - unit).max())
    if error <= PLACEMENT_NOTE:
        return
    spread = float(np.linalg.norm(t - t.mean(axis=0), axis=1).max())
    what = (f"{source}: camera positions as large as {float(np.abs(t).max()):.4g} world units, "
            f"spread over only {spread:.4g}, lose precision in float32 (in which the scene "
            f"keeps them): they land up to {error:.3g} (of the unit cube's width) from where "
            "the file puts them")
    remedy = ("subtract a common origin (e.g. the mean camera position "
              f"{_point(centre)}) from every translation in the file")
    if error > PLACEMENT_ERROR:
        raise DataError(f"{what}, which misplaces the cameras by several pixels; {remedy}.")
    notes.append(f"{what}; to train on exact positions, {remedy}.")


def aabb_scale_for_extent(extent: float) -> float:
    """The smallest power of two ``s`` whose box, ``0.5 +- s / 2`` in unit-cube coordinates,
    holds points ``extent`` (normalised world units, at scale 0.33) from the centre along every
    axis; at least 1, at most :data:`MAX_AUTO_AABB_SCALE`."""
    need = 2.0 * DEFAULT_SCALE * float(extent)
    scale = 1.0
    while scale < need and scale < MAX_AUTO_AABB_SCALE:
        scale *= 2.0
    return scale


# The share of the sparse points each image observes that the modelled box must hold
# (LLFF's imgs2poses takes the 99.5th percentile of a view's point depths as its far bound): a
# few stray points (bad triangulations) should not grow the box. The box holds this share for
# every image, not of all points together: a 360 capture triangulates its object densely and
# its room sparsely, so 99% of all points can lie on the object while every view sees the room
# behind it (bird360: 99% of the points within 2.3 camera radii, aabb_scale 2; its views' far
# points up to 11.5 radii, aabb_scale 8, which scored 2.4-2.9 dB higher at 60-120 s in one
# seed per arm; BENCHMARKS.md).
IMAGE_POINTS_QUANTILE = 0.995
# Fewest observed points for an image's percentile to count: at least 1 / (1 - quantile), so
# that the percentile can leave out a stray point (with fewer, one bad two-view triangulation
# seen by one image would set the box: a review measured aabb_scale 16 from 150 points an image).
MIN_IMAGE_POINTS = 200
# Without observations (a model written without tracks): the share of all points.
POINTS_QUANTILE = 0.99


def aabb_scale_from_points(points: np.ndarray, observations: tuple[np.ndarray, np.ndarray],
                            image_ids: list[int], centre, radius: float,
                            notes: list[str]) -> float:
    """aabb_scale from the sparse points [P, 3] (the model's world) and their observations
    (``(image ids, point rows)``, one entry per track element): the box, around the
    cameras' centre in the normalised world, holds :data:`IMAGE_POINTS_QUANTILE` of the points
    each of ``image_ids`` observes, at most 16; :data:`POINTS_QUANTILE` of all points when no
    image observes :data:`MIN_IMAGE_POINTS`; 1 without points."""
    finite = np.isfinite(points).all(axis=1)  # a damaged point must not set the box
    if not finite.any():
        return 1.0
    extent = np.abs((points - centre) / radius).max(axis=1)  # [P], per axis from the centre
    seen_by, rows = observations
    keep = finite[rows] & np.isin(seen_by, image_ids)
    seen_by, rows = seen_by[keep], rows[keep]
    order = np.argsort(seen_by, kind="stable")
    groups = np.split(extent[rows[order]], np.flatnonzero(np.diff(seen_by[order])) + 1)
    per_image = [float(np.quantile(g, IMAGE_POINTS_QUANTILE)) for g in groups
                 if len(g) >= MIN_IMAGE_POINTS]
    if per_image:
        reach = max(per_image)
        how = (f"each of the {len(per_image)} images that observe at least {MIN_IMAGE_POINTS} "
               f"of them sees {IMAGE_POINTS_QUANTILE:.1%} of those within {reach:.3g} of the "
               "cameras' centre per axis")
    else:
        reach = float(np.quantile(extent[finite], POINTS_QUANTILE))
        how = (f"no image observes {MIN_IMAGE_POINTS} of them; {POINTS_QUANTILE:.0%} lie within "
               f"{reach:.3g} of the cameras' centre per axis")
    aabb_scale = aabb_scale_for_extent(max(reach, 1.0))
    notes.append(f"aabb_scale {aabb_scale:g} from the {int(finite.sum())} sparse points ({how}); "
                 "set data.aabb_scale to choose another.")
    return aabb_scale
