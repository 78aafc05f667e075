"""Loader for real captures: a single ``transforms.json`` (instant-ngp or nerfstudio dialect).

Conventions (both dialects, and the same as the Blender loader):

- ``transform_matrix`` is a 4x4 **OpenGL camera-to-world** matrix (camera looks down -z, +y up,
  +x right). instant-ngp's colmap2nerf.py writes OpenGL poses, and nerfstudio documents the
  same ("We use the OpenGL/Blender (and original NeRF) coordinate convention for cameras",
  docs.nerf.studio, Data conventions). Poses are used as stored. nerfstudio's optional
  ``applied_transform`` records a world transform its converter has *already* applied to the
  poses; it is not applied again (only mentioned in ``notes``).
- Intrinsics ``fl_x, fl_y, cx, cy`` are in pixels of a ``w`` x ``h`` image, with the image's
  top-left corner at (0, 0) and pixel (i, j)'s centre at (i + 0.5, j + 0.5) (COLMAP, instant-ngp
  and nerfstudio agree; docs/design.md samples pixel centres at +0.5). Distortion coefficients
  use OpenCV's **normalized camera coordinates** (x right, y down, z forward):
  :mod:`nerfmine.ops.distortion` undistorts there and then flips y and z into OpenGL axes.
- Intrinsics may be given at the top level, per frame (a frame's key wins), or both. Missing
  focal lengths come from ``camera_angle_x``/``camera_angle_y``; fl_y defaults to fl_x, cx/cy to
  the image centre; w/h, when given, must equal the image's size.
- Distortion ``k1 k2 k3 k4 p1 p2`` (missing = 0), at the top level, per frame (a frame's key
  wins), or both, like the intrinsics. Camera model: nerfstudio ``camera_model``
  "OPENCV" -> "opencv", "OPENCV_FISHEYE" -> "fisheye", "PINHOLE"/"SIMPLE_PINHOLE" -> "pinhole";
  instant-ngp: decided from every frame that has an image (whatever the split, so all splits
  agree), each frame with the top-level keys and its own (as instant-ngp reads a frame's lens):
  ``is_fisheye`` (a frame's wins) -> "fisheye", else "opencv" if any frame's coefficients are
  non-zero (frames without any then have zero coefficients), else "pinhole". Fisheye frames
  mixed with perspective ones are refused (one scene, one kind of lens).
- Unit cube: ``x_unit = x_world * scale + offset`` with the file's ``scale``/``offset`` or
  instant-ngp's defaults 0.33 and (0.5, 0.5, 0.5); ``aabb_scale`` (default 1) is recorded.
  A nerfstudio file without ``scale``/``offset`` is centred and scaled from its camera poses
  (nerfstudio's own loader does that): the mean camera position goes to the cube's centre and
  the cameras to within 0.33 of it (``scale = 0.33 / radius``, ``offset = 0.5 - centre *
  scale``), as COLMAP models are.
- Downscale: ``downscale`` N scales the intrinsics by ``(w // N) / w`` and ``(h // N) / h``
  (the images become ``w // N`` by ``h // N``). When every frame's ``file_path`` lies in one
  folder below the file's (``images/frame_00001.jpg``), the folder's sibling with ``_N``
  appended (``images_2/frame_00001.jpg``, nerfstudio's layout: its ``ns-process-data`` writes
  ``images_2/`` etc. beside ``images/``) is read instead of box-filtering the originals, when
  it holds every frame's image (the path below the folder kept) at exactly that size
  (:func:`nerfmine.data.files.prescaled_images`; otherwise a note says why). The intrinsics are
  the same either way (nerfstudio scales them by 1 / N, which differs by under a pixel when N
  does not divide the size; ``(w // N) / w`` is what resizing the whole image to ``w // N``
  pixels does), so only the resampling filter differs. nerfstudio looks for
  ``images_N/<file name>`` whatever the folder; here the folder's own name gets the ``_N``
  and subfolders are kept, the same for its usual ``images/<name>`` paths. The originals are
  still needed: they decide which frames exist and their sizes check ``w``/``h``.
- Splits: frames are sorted by ``file_path``; split "test" holds every ``holdout_every``-th frame
  (sorted index % holdout_every == 0), "train" the rest, "all" every frame. Frames whose image
  is missing are dropped (with ``skip_missing``) *before* the hold-out, so a file with missing
  images splits like the same file without those frames.

:func:`nerfmine.data.load_scene` sends a transforms.json here, a Blender folder and a COLMAP
project elsewhere.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nerfmine.data.capture import (
    COINCIDE_FLOAT32,
    DEFAULT_OFFSET,
    DEFAULT_SCALE,
    capture_scene,
    check_camera_placement,
    coincidence_note,
    handle_missing,
    holdout_indices,
    pose_centre_and_radius,
)
from nerfmine.data.files import (
    PoseFixes,
    downscaled_size,
    find_image,
    finite_number,
    fully_transparent,
    image_size,
    placeholder_images,
    prescaled_folder,
    prescaled_images,
    read_angle,
    read_image,
    read_json,
    read_pose,
    transparency_notes,
)
from nerfmine.data.scene_data import SceneData
from nerfmine.errors import DataError
from nerfmine.json_files import shown

_NERFSTUDIO_MODELS = {
    "OPENCV": "opencv",
    "OPENCV_FISHEYE": "fisheye",
    "PINHOLE": "pinhole",
    "SIMPLE_PINHOLE": "pinhole",
}
_DIST_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def _sharpness_filter(frames: list, found: list, min_sharpness: float | None,
                      meta_path: Path, notes: list[str]) -> tuple[list, dict[int, float]]:
    """Per-frame sharpness of the found frames (validated), and the frames kept by
    ``min_sharpness`` (a frame without a value is kept)."""
    sharp: dict[int, float] = {}
    for i, _ in found:
        if "sharpness" not in frames[i]:
            continue
        v = finite_number(frames[i]["sharpness"])
        if v is None or v < 0:
            raise DataError(f"{meta_path}: frames[{i}] 'sharpness' must be a number >= 0, "
                            f"got {shown(frames[i]['sharpness'])}.")
        sharp[i] = v
    if min_sharpness is None:
        return found, sharp
    if not sharp:
        raise DataError(f"{meta_path}: no frame has a 'sharpness' value, so --min-sharpness "
                        f"{min_sharpness:g} cannot choose frames; leave it out (instant-ngp's "
                        "colmap2nerf writes one per frame).")
    kept = [(i, image) for i, image in found if sharp.get(i, math.inf) >= min_sharpness]
    lo, hi = min(sharp.values()), max(sharp.values())
    if not kept:
        raise DataError(f"{meta_path}: every frame's sharpness is below --min-sharpness "
                        f"{min_sharpness:g} (they range from {lo:.4g} to {hi:.4g}); choose a "
                        "lower value.")
    notes.append(f"--min-sharpness {min_sharpness:g}: kept {len(kept)} of {len(found)} frames "
                 f"(sharpness ranges from {lo:.4g} to {hi:.4g}; frames without one are kept).")
    return kept, sharp


def load_transforms(
    meta_path: Path, split: str, downscale: int, holdout_every: int, skip_missing: bool,
    decode: bool = True, min_sharpness: float | None = None,
) -> SceneData:
    """A split of the capture ``meta_path`` (a transforms.json, either dialect; see the module
    docstring for the conventions). The arguments are :func:`nerfmine.data.load_scene`'s,
    checked there."""
    root = meta_path.parent
    meta = read_json(meta_path, root, split)
    notes: list[str] = []
    dialect = "nerfstudio" if "camera_model" in meta else "instant-ngp"
    if dialect == "nerfstudio":
        camera_model = _camera_model(meta, meta_path)
    else:
        _fisheye_flag(meta, meta_path)  # checked before the frames, as before

    if "frames" not in meta:
        raise DataError(f"{meta_path}: missing key 'frames' (a list of camera frames).")
    frames = meta["frames"]
    if not isinstance(frames, list):
        raise DataError(f"{meta_path}: 'frames' must be a list, got {type(frames).__name__}.")
    if not frames:
        raise DataError(f"{meta_path}: 'frames' has no entries.")
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise DataError(f"{meta_path}: frames[{i}] must be an object, got {shown(frame)}.")
        rel = frame.get("file_path")
        if not isinstance(rel, str) or not rel:
            raise DataError(
                f"{meta_path}: frames[{i}] needs 'file_path', a non-empty string (the image "
                f"relative to {root})."
            )
        if dialect == "nerfstudio" and "camera_model" in frame:
            if _camera_model(frame, meta_path, where=f"frames[{i}] ") != camera_model:
                raise DataError(
                    f"{meta_path}: frames[{i}] ('{rel}') has camera_model "
                    f"'{frame['camera_model']}' but the file's is '{meta['camera_model']}'; "
                    "mixed camera models are not supported."
                )

    # (original index, frame) sorted by file name
    order = sorted(range(len(frames)), key=lambda i: frames[i]["file_path"])
    found: list[tuple[int, Path]] = []
    missing: list[str] = []
    for i in order:
        image = find_image(root, frames[i]["file_path"], meta_path, f"frames[{i}]")
        if image is None:
            missing.append(frames[i]["file_path"])
        else:
            found.append((i, image))
    handle_missing(meta_path, "frames' images", "frames name images that do not exist",
                   len(frames), missing, len(found), skip_missing, notes,
                   f"file_path is resolved relative to {root}")
    found, sharpness = _sharpness_filter(frames, found, min_sharpness, meta_path, notes)
    chosen = [found[k] for k in holdout_indices(len(found), split, holdout_every, meta_path,
                                                "frame")]

    # Intrinsics and image sizes of every frame that has an image (cheap header reads), so a
    # bad frame is reported whatever the split.
    params: dict[int, tuple[list[float], list[float], tuple[int, int]]] = {}
    for i, image in found:
        params[i] = _frame_intrinsics(meta, frames[i], i, image, meta_path)
    if dialect == "instant-ngp":
        camera_model = _instant_ngp_lens(meta, frames, found, params, meta_path)
    # Poses of every frame with an image too: float64 as the file gives them, rotations
    # checked and orthonormalised (the scene keeps them in float32).
    fixes = PoseFixes()
    poses = {i: read_pose(frames[i], i, meta_path, fixes) for i, _ in found}

    n = len(chosen)
    full_size = params[chosen[0][0]][2]
    w, h = full_size
    out_size = downscaled_size(full_size, downscale)
    sx, sy = out_size[0] / w, out_size[1] / h
    prescaled = _prescaled(root, found, params, downscale, notes)
    images = (np.empty((n, out_size[1], out_size[0], 4), dtype=np.uint8) if decode
              else placeholder_images(n, out_size[1], out_size[0]))
    c2w = np.empty((n, 4, 4), dtype=np.float32)
    intrinsics = np.empty((n, 4), dtype=np.float64)
    distortion = np.empty((n, 6), dtype=np.float64)
    paths: list[Path] = []  # the files read
    originals: list[Path] = []
    transparent: list[Path] = []
    for k, (i, image) in enumerate(chosen):
        intr, dist, size = params[i]
        if size != full_size:
            raise DataError(
                f"{meta_path}: images have mixed sizes: {originals[0] if originals else image} is "
                f"{w}x{h} but {image} (frames[{i}]) is {size[0]}x{size[1]}; all images of a "
                "split must share one size."
            )
        c2w[k] = poses[i]
        source = image if prescaled is None else prescaled[i]
        if decode:
            img = read_image(source, i, meta_path)
            if prescaled is None and downscale > 1:
                img = img.resize(out_size, Image.BOX)
            images[k] = np.asarray(img)  # [H, W, 4]
            if fully_transparent(images[k]):
                transparent.append(source)
        fx, fy, cx, cy = intr
        intrinsics[k] = (fx * sx, fy * sy, cx * sx, cy * sy)
        distortion[k] = dist
        paths.append(source)
        originals.append(image)

    if camera_model == "pinhole" and np.any(distortion != 0):
        notes.append(
            "camera_model is PINHOLE: the distortion coefficients in the file are ignored."
        )
    if camera_model == "opencv" and np.any(distortion[:, 3] != 0):
        notes.append("k4 is ignored by the OpenCV radial-tangential model (k1, k2, k3, p1, p2).")
    if "applied_transform" in meta:
        notes.append(
            "applied_transform is present: the poses already include it and are used as stored."
        )
    scale, offset = _scale_offset(meta, meta_path)
    if dialect == "nerfstudio" and "scale" not in meta and "offset" not in meta:
        # nerfstudio's loader centres and scales the poses itself (its files carry neither):
        # do the same, from every frame with an image so that all splits share one world.
        centres = np.stack([poses[i][:3, 3].astype(np.float32) for i, _ in found])
        centre, radius = pose_centre_and_radius(centres, COINCIDE_FLOAT32)
        scale = DEFAULT_SCALE / radius
        offset = tuple(float(v) for v in DEFAULT_OFFSET - centre * scale)
        notes.append(
            "nerfstudio file without scale/offset: the scene is centred at the mean camera "
            f"position ({centre[0]:.4g}, {centre[1]:.4g}, {centre[2]:.4g}) and divided by the "
            f"largest camera distance from it ({radius:.4g}), then mapped with instant-ngp's "
            f"0.33 and 0.5: scale {scale:.4g}, offset ({offset[0]:.4g}, {offset[1]:.4g}, "
            f"{offset[2]:.4g}). Give 'scale' and 'offset' in the file to choose them yourself."
        )
    aabb_scale = _number(meta, "aabb_scale", meta_path, default=1.0, positive=True)
    every = np.stack([poses[i] for i, _ in found])  # [M, 4, 4] float64
    check_camera_placement(
        every[:, :3, 3], every.astype(np.float32), scale, offset,
        [f"frames[{i}] ('{frames[i]['file_path']}')" for i, _ in found], meta_path,
        "give 'scale' and 'offset' in the file (x_unit = x * scale + offset) so that the "
        "cameras lie within about 1 of the cube's centre 0.5", notes)
    notes += fixes.notes(meta_path)
    coincident = coincidence_note(every, meta_path, "frame", COINCIDE_FLOAT32)
    if coincident:
        notes.append(coincident)
    notes += transparency_notes(transparent, n if decode else 0, split)

    scene = capture_scene(images, c2w, intrinsics, distortion, camera_model, paths, split,
                          out_size, scale, offset, aabb_scale, dialect, notes)
    if sharpness:
        scene.sharpness = torch.tensor([sharpness.get(i, math.nan) for i, _ in chosen],
                                       dtype=torch.float32)
    return scene


def _camera_model(meta: dict, meta_path: Path, where: str = "") -> str:
    """The lens of a nerfstudio file (or frame: ``where``) from its ``camera_model``."""
    name = meta["camera_model"]
    if not isinstance(name, str) or name not in _NERFSTUDIO_MODELS:
        raise DataError(
            f"{meta_path}: {where}camera_model {shown(name)} is not supported; expected one "
            f"of {', '.join(_NERFSTUDIO_MODELS)}."
        )
    return _NERFSTUDIO_MODELS[name]


def _fisheye_flag(d: dict, meta_path: Path, where: str = "") -> bool | None:
    """``d``'s ``is_fisheye`` (None when it has none)."""
    if "is_fisheye" not in d:
        return None
    fisheye = d["is_fisheye"]
    if fisheye not in (True, False):  # also 0 and 1, which instant-ngp's own files never use
        raise DataError(f"{meta_path}: {where}'is_fisheye' must be true or false, got "
                        f"{shown(fisheye)}.")
    return bool(fisheye)


def _instant_ngp_lens(meta: dict, frames: list, found: list[tuple[int, Path]],
                      params: dict, meta_path: Path) -> str:
    """The lens of an instant-ngp file from every frame with an image: each frame's
    ``is_fisheye`` (its own, else the top level's) and distortion coefficients (the top
    level's overridden by its own, already merged in ``params``), as instant-ngp reads a
    frame's lens over the file's."""
    top = _fisheye_flag(meta, meta_path) or False
    kinds: dict[str, int] = {}  # lens -> the first frame with it
    for i, _ in found:
        where = f"frames[{i}] ('{frames[i]['file_path']}') "
        own = _fisheye_flag(frames[i], meta_path, where)
        fisheye = top if own is None else own
        kind = ("fisheye" if fisheye else
                "opencv" if any(v != 0 for v in params[i][1]) else "pinhole")
        kinds.setdefault(kind, i)
    if "fisheye" in kinds and len(kinds) > 1:
        other = next(k for k in kinds if k != "fisheye")
        raise DataError(
            f"{meta_path}: frames[{kinds['fisheye']}] is a fisheye camera (is_fisheye) but "
            f"frames[{kinds[other]}] is not; one scene needs one kind of lens (give "
            "'is_fisheye' at the top level, or the same in every frame).")
    if "fisheye" in kinds:
        return "fisheye"
    return "opencv" if "opencv" in kinds else "pinhole"


def _prescaled(root: Path, found: list[tuple[int, Path]], params: dict, downscale: int,
               notes: list[str]) -> dict[int, Path] | None:
    """The pre-downscaled copy of every frame's image (frame index -> path) when the frames'
    images lie in one folder below ``root`` whose ``_{downscale}`` sibling holds them all at
    the downscaled size (see the module docstring); None to box-filter the originals."""
    if downscale <= 1:
        return None
    tops = set()
    for _, image in found:
        try:
            parts = image.relative_to(root).parts
        except ValueError:  # an absolute file_path elsewhere
            return None
        tops.add(parts[0] if len(parts) > 1 and parts[0] != ".." else None)
    if len(tops) != 1 or None in tops:
        candidates = sorted(t for t in tops
                            if t and prescaled_folder(root / t, downscale).is_dir())
        if candidates:
            notes.append(f"{prescaled_folder(root / candidates[0], downscale)} is not used for "
                         f"downscale {downscale}: the frames' images are not all in "
                         f"{root / candidates[0]}; the images are box-filtered instead.")
        return None
    images_dir = root / tops.pop()
    files = prescaled_images(images_dir, downscale,
                             [(image, params[i][2]) for i, image in found], notes)
    return None if files is None else {i: f for (i, _), f in zip(found, files)}


def _number(d: dict, key: str, meta_path: Path, default=None, positive=False, where=""):
    if key not in d:
        return default
    v = finite_number(d[key])
    if v is None:
        raise DataError(f"{meta_path}: {where}'{key}' must be a finite number, got "
                        f"{shown(d[key])}.")
    if positive and v <= 0:
        raise DataError(f"{meta_path}: {where}'{key}' must be > 0, got {v!r}.")
    return v


def _frame_intrinsics(
    meta: dict, frame: dict, i: int, image: Path, meta_path: Path
) -> tuple[list[float], list[float], tuple[int, int]]:
    """(fx, fy, cx, cy) and (k1, k2, k3, k4, p1, p2) at full resolution, and the image size."""
    rel = frame["file_path"]
    where = f"frames[{i}] ('{rel}') "
    size = image_size(image, i, meta_path)  # header only

    def get(key, positive=False):
        if key in frame:
            return _number(frame, key, meta_path, positive=positive, where=where)
        return _number(meta, key, meta_path, positive=positive)

    w, h = size
    for key, actual in (("w", w), ("h", h)):
        given = get(key, positive=True)
        if given is not None and int(round(given)) != actual:
            src = "frame" if key in frame else "top level"
            raise DataError(
                f"{meta_path}: {where}has {key}={given:g} ({src}) but its image {image} is "
                f"{w}x{h}; fix the intrinsics or the image."
            )
    def focal(axis: str, extent: int) -> float | None:
        """fl_<axis>, else from camera_angle_<axis> (frame or top level), else None."""
        given = get(f"fl_{axis}", positive=True)
        if given is not None:
            return given
        key = f"camera_angle_{axis}"
        angle = read_angle(frame if key in frame else meta, key, meta_path, required=False)
        return None if angle is None else 0.5 * extent / math.tan(0.5 * angle)

    fx = focal("x", w)
    if fx is None:
        raise DataError(
            f"{meta_path}: {where}has no focal length: neither 'fl_x' nor 'camera_angle_x' "
            "is given in the frame or at the top level."
        )
    fy = focal("y", h)
    fy = fx if fy is None else fy
    cx = get("cx")
    cy = get("cy")
    cx = 0.5 * w if cx is None else cx
    cy = 0.5 * h if cy is None else cy
    dist = [get(k) or 0.0 for k in _DIST_KEYS]
    return [fx, fy, cx, cy], dist, size


def _scale_offset(meta: dict, meta_path: Path) -> tuple[float, tuple]:
    scale = _number(meta, "scale", meta_path, default=DEFAULT_SCALE, positive=True)
    offset = DEFAULT_OFFSET
    if "offset" in meta:
        o = meta["offset"]
        ok = isinstance(o, list) and len(o) == 3 and all(finite_number(v) is not None for v in o)
        if not ok:
            raise DataError(f"{meta_path}: 'offset' must be a list of 3 numbers, got {shown(o)}.")
        offset = tuple(float(v) for v in o)
    return scale, offset
