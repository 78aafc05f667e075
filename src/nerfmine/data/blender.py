"""Loader for the NeRF-synthetic ("Blender") transforms format.

A scene folder holds ``transforms_{split}.json`` files with ``camera_angle_x`` (and optionally
``camera_angle_y``) and a list of ``frames``, each with a ``file_path`` relative to the folder
(with or without ``.png``) and a 4x4 OpenGL camera-to-world ``transform_matrix``.
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
    check_camera_placement,
    coincidence_note,
)
from nerfmine.data.files import (
    HeaderOnly,
    PoseFixes,
    check_root,
    downscaled_size,
    find_image,
    fully_transparent,
    image_size,
    placeholder_images,
    read_angle,
    read_image,
    read_json,
    read_pose,
    transparency_notes,
)
from nerfmine.data.scene_data import SceneData
from nerfmine.errors import DataError
from nerfmine.json_files import shown


def load_blender(root: str | Path, split: str, downscale: int = 1,
                 decode: bool = True) -> SceneData:
    """Load ``root/transforms_{split}.json`` and its images, optionally downscaled by box filter.

    ``decode=False`` reads only the image headers: ``images`` is then a placeholder on the
    ``meta`` device with the right shape (see :func:`placeholder_images`)."""
    root = check_root(root)
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise DataError(
            f"downscale must be a whole number >= 1 (1 keeps full resolution), got {downscale!r}."
        )
    meta_path = root / f"transforms_{split}.json"
    meta = read_json(meta_path, root, split)

    frames = meta.get("frames")
    if "frames" not in meta:
        raise DataError(f"{meta_path}: missing key 'frames' (a list of camera frames).")
    if not isinstance(frames, list):
        raise DataError(f"{meta_path}: 'frames' must be a list, got {type(frames).__name__}.")
    if not frames:
        raise DataError(
            f"{meta_path}: split '{split}' is empty ('frames' has no entries); "
            "add frames or pick another split."
        )
    angle_x = read_angle(meta, "camera_angle_x", meta_path, required=True)
    angle_y = read_angle(meta, "camera_angle_y", meta_path, required=False)

    n = len(frames)
    poses = np.empty((n, 4, 4), dtype=np.float64)
    paths: list[Path] = []
    fixes = PoseFixes()
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise DataError(f"{meta_path}: frames[{i}] must be an object, got {shown(frame)}.")
        paths.append(_resolve_image(frame, i, root, meta_path))
        poses[i] = read_pose(frame, i, meta_path, fixes)
    c2w = poses.astype(np.float32)
    # NeRF-synthetic scenes use instant-ngp's default mapping to the unit cube (SceneData's).
    notes: list[str] = []
    check_camera_placement(
        poses[:, :3, 3], c2w, DEFAULT_SCALE, DEFAULT_OFFSET,
        [f"frames[{i}] ('{frame['file_path']}')" for i, frame in enumerate(frames)], meta_path,
        "a NeRF-synthetic scene maps x to x * 0.33 + 0.5, so its cameras must stand within a "
        "few units of the origin; write the capture as a transforms.json with 'scale' and "
        "'offset' instead", notes)
    notes += fixes.notes(meta_path)
    coincident = coincidence_note(poses, meta_path, "frame", COINCIDE_FLOAT32)
    if coincident:
        notes.append(coincident)

    images: np.ndarray | None = None
    full_size: tuple[int, int] | None = None
    transparent: list[Path] = []
    for i, path in enumerate(paths):
        img = read_image(path, i, meta_path) if decode else HeaderOnly(
            image_size(path, i, meta_path))
        if full_size is None:
            full_size = img.size
            out_size = downscaled_size(full_size, downscale,
                                       f"the images of split '{split}' (e.g. {path})")
            if decode:
                images = np.empty((n, out_size[1], out_size[0], 4), dtype=np.uint8)
        elif img.size != full_size:
            raise DataError(
                f"{meta_path}: images of split '{split}' have mixed sizes: {paths[0]} is "
                f"{full_size[0]}x{full_size[1]} but {path} (frames[{i}]) is "
                f"{img.size[0]}x{img.size[1]}; all images of a split must share one size."
            )
        if not decode:
            continue
        if downscale > 1:
            img = img.resize(out_size, Image.BOX)
        images[i] = np.asarray(img)  # [H, W, 4]
        if fully_transparent(images[i]):
            transparent.append(path)

    assert full_size is not None
    image_tensor = (torch.from_numpy(images) if decode
                    else placeholder_images(n, out_size[1], out_size[0]))
    w, h = full_size
    fx = 0.5 * w / math.tan(0.5 * angle_x)
    fy = fx if angle_y is None else 0.5 * h / math.tan(0.5 * angle_y)
    sx, sy = out_size[0] / w, out_size[1] / h
    notes += transparency_notes(transparent, n if decode else 0, split)
    return SceneData(
        images=image_tensor,
        c2w=torch.from_numpy(c2w),
        fx=fx * sx,
        fy=fy * sy,
        cx=0.5 * out_size[0],
        cy=0.5 * out_size[1],
        width=out_size[0],
        height=out_size[1],
        image_paths=paths,
        split=split,
        notes=notes,
    )


def _resolve_image(frame: dict, i: int, root: Path, meta_path: Path) -> Path:
    if "file_path" not in frame:
        raise DataError(f"{meta_path}: frames[{i}] is missing key 'file_path'.")
    rel = frame["file_path"]
    if not isinstance(rel, str) or not rel:
        raise DataError(f"{meta_path}: frames[{i}].file_path must be a non-empty string.")
    found = find_image(root, rel, meta_path, f"frames[{i}]")
    if found is not None:
        return found
    raise DataError(
        f"{meta_path}: image of frames[{i}] (file_path '{rel}') not found; "
        f"tried {root / rel} and {root / (rel + '.png')}."
    )
