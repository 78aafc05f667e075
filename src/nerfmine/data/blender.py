"""Loader for the NeRF-synthetic ("Blender") transforms format.

A scene folder holds ``transforms_{split}.json`` files with ``camera_angle_x`` (and optionally
``camera_angle_y``) and a list of ``frames``, each with a ``file_path`` relative to the folder
(with or without ``.png``) and a 4x4 OpenGL camera-to-world ``transform_matrix``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nerfmine.errors import DataError

_SPLIT_ORDER = ("train", "val", "test")


@dataclass
class SceneData:
    """One split of a scene: RGBA images, OpenGL poses in world units and pinhole intrinsics."""

    images: torch.Tensor  # [N, H, W, 4] uint8 RGBA
    c2w: torch.Tensor  # [N, 4, 4] float32, OpenGL camera-to-world, world coordinates
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    image_paths: list[Path]
    split: str
    scale: float = 0.33
    offset: tuple = field(default=(0.5, 0.5, 0.5))
    # Real captures (nerfmine.data.transforms.load_capture); Blender scenes keep the defaults.
    intrinsics: torch.Tensor | None = None  # [N, 4] float32 fx, fy, cx, cy per image (pixels)
    distortion: torch.Tensor | None = None  # [N, 6] float32 k1, k2, k3, k4, p1, p2 per image
    camera_model: str = "pinhole"  # "pinhole" | "opencv" | "fisheye"
    aabb_scale: float = 1.0  # instant-ngp's scene extent: the box is 0.5 +- aabb_scale / 2
    dialect: str = "blender"  # "blender" | "instant-ngp" | "nerfstudio"
    sharpness: torch.Tensor | None = None  # [N] float32 per-frame sharpness (NaN: none given)
    notes: list[str] = field(default_factory=list)  # what the loader did that the user should know

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def c2w_unit(self) -> torch.Tensor:
        """Poses mapped into the unit cube: rotation unchanged, translation * scale + offset."""
        out = self.c2w.clone()  # [N, 4, 4]
        offset = torch.tensor(self.offset, dtype=out.dtype)  # [3]
        out[:, :3, 3] = out[:, :3, 3] * self.scale + offset
        return out


def available_splits(root: str | Path) -> list[str]:
    """Splits with a ``transforms_{split}.json`` in ``root`` (train, val, test first)."""
    root = _check_root(root)
    names = [p.name[len("transforms_") : -len(".json")] for p in root.glob("transforms_*.json")]
    names = [n for n in names if n]
    known = [s for s in _SPLIT_ORDER if s in names]
    return known + sorted(n for n in names if n not in _SPLIT_ORDER)


def load_blender(root: str | Path, split: str, downscale: int = 1,
                 decode: bool = True) -> SceneData:
    """Load ``root/transforms_{split}.json`` and its images, optionally downscaled by box filter.

    ``decode=False`` reads only the image headers: ``images`` is then a placeholder on the
    ``meta`` device with the right shape (see :func:`placeholder_images`)."""
    root = _check_root(root)
    if isinstance(downscale, bool) or not isinstance(downscale, int) or downscale < 1:
        raise DataError(
            f"downscale must be a whole number >= 1 (1 keeps full resolution), got {downscale!r}."
        )
    meta_path = root / f"transforms_{split}.json"
    meta = _read_json(meta_path, root, split)

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
    angle_x = _read_angle(meta, "camera_angle_x", meta_path, required=True)
    angle_y = _read_angle(meta, "camera_angle_y", meta_path, required=False)

    n = len(frames)
    c2w = np.empty((n, 4, 4), dtype=np.float32)
    paths: list[Path] = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise DataError(f"{meta_path}: frames[{i}] must be an object, got {frame!r:.60}.")
        paths.append(_resolve_image(frame, i, root, meta_path))
        c2w[i] = _read_transform(frame, i, meta_path)

    images: np.ndarray | None = None
    full_size: tuple[int, int] | None = None
    for i, path in enumerate(paths):
        img = _read_image(path, i, meta_path) if decode else _HeaderOnly(
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

    assert full_size is not None
    image_tensor = (torch.from_numpy(images) if decode
                    else placeholder_images(n, out_size[1], out_size[0]))
    w, h = full_size
    fx = 0.5 * w / math.tan(0.5 * angle_x)
    fy = fx if angle_y is None else 0.5 * h / math.tan(0.5 * angle_y)
    sx, sy = out_size[0] / w, out_size[1] / h
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
    )


def _check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(
            f"data path {root} does not exist; pass the folder that holds transforms_train.json."
        )
    if not root.is_dir():
        raise DataError(
            f"data path {root} is not a folder; pass the folder that holds transforms_train.json."
        )
    return root


def _read_json(meta_path: Path, root: Path, split: str) -> dict:
    if not meta_path.is_file():
        found = available_splits(root)
        have = ", ".join(found) if found else "none (no transforms_*.json in that folder)"
        raise DataError(
            f"no transforms file for split '{split}': {meta_path} is missing. "
            f"Splits present in {root}: {have}."
        )
    try:
        text = meta_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {meta_path}: {e}") from e
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{meta_path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
        ) from e
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object at the top level.")
    return meta


def _read_angle(meta: dict, key: str, meta_path: Path, required: bool) -> float | None:
    if key not in meta:
        if required:
            raise DataError(
                f"{meta_path}: missing key '{key}' (horizontal field of view in radians)."
            )
        return None
    value = meta[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0.0 < value < math.pi:
        raise DataError(
            f"{meta_path}: '{key}' must be an angle in radians in (0, pi), got {value!r}."
        )
    return float(value)


def _resolve_image(frame: dict, i: int, root: Path, meta_path: Path) -> Path:
    if "file_path" not in frame:
        raise DataError(f"{meta_path}: frames[{i}] is missing key 'file_path'.")
    rel = frame["file_path"]
    if not isinstance(rel, str) or not rel:
        raise DataError(f"{meta_path}: frames[{i}].file_path must be a non-empty string.")
    given = root / rel
    if given.is_file():
        return given
    with_png = root / (rel + ".png")
    if with_png.is_file():
        return with_png
    raise DataError(
        f"{meta_path}: image of frames[{i}] (file_path '{rel}') not found; "
        f"tried {given} and {with_png}."
    )


def _read_transform(frame: dict, i: int, meta_path: Path) -> np.ndarray:
    rel = frame.get("file_path")
    if "transform_matrix" not in frame:
        raise DataError(
            f"{meta_path}: frames[{i}] ('{rel}') is missing key 'transform_matrix' (a 4x4 list)."
        )
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(
            f"{meta_path}: frames[{i}] ('{rel}') transform_matrix is not a 4x4 list of numbers."
        ) from e
    if m.shape != (4, 4):
        raise DataError(
            f"{meta_path}: frames[{i}] ('{rel}') transform_matrix has shape {list(m.shape)}, "
            "expected 4x4."
        )
    if not np.isfinite(m).all():
        raise DataError(
            f"{meta_path}: frames[{i}] ('{rel}') transform_matrix holds NaN or inf values."
        )
    return m.astype(np.float32)


def downscaled_size(size: tuple[int, int], downscale: int, what: str = "the images"
                    ) -> tuple[int, int]:
    """(width, height) of images of ``size`` shrunk ``downscale`` times; a clear error when
    the factor is larger than the images."""
    w, h = size
    if w // downscale < 1 or h // downscale < 1:
        raise DataError(f"downscale={downscale} is larger than {what} ({w}x{h}); use a value "
                        f"<= {min(w, h)}.")
    return w // downscale, h // downscale


class _HeaderOnly:
    """Stands in for an image whose header only was read (``size`` is (width, height))."""

    def __init__(self, size: tuple[int, int]):
        self.size = size


def placeholder_images(n: int, height: int, width: int) -> torch.Tensor:
    """[n, height, width, 4] uint8 on the ``meta`` device: the shape of a split's images
    without their pixels (loaders' ``decode=False``; memory estimates and camera paths)."""
    return torch.empty((n, height, width, 4), dtype=torch.uint8, device="meta")


def image_size(path: Path, i: int, meta_path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        _read_image(path, i, meta_path)  # words the error (not an image, corrupt, ...)
        raise


def _read_image(path: Path, i: int, meta_path: Path) -> Image.Image:
    """Open one image as 8-bit RGBA (RGB gets alpha 255)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                raise DataError(
                    f"{path} (frames[{i}] of {meta_path.name}) has pixel mode {im.mode}; "
                    "expected an 8-bit RGB or RGBA image."
                )
            return im.convert("RGBA")
    except UnidentifiedImageError as e:
        raise DataError(
            f"{path} (frames[{i}] of {meta_path.name}) is not an image file; "
            "expected a PNG (RGBA or RGB)."
        ) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{path} (frames[{i}] of {meta_path.name}) is corrupt or unreadable: {e}. "
            "Re-export or re-download the image."
        ) from e
