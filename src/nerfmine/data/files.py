"""Reading scene files, shared by the loaders: JSON transforms files, poses, angles and images
(whole, or only their headers), each failing with a message that names the file and the frame.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nerfmine.errors import DataError

_SPLIT_ORDER = ("train", "val", "test")


def available_splits(root: str | Path) -> list[str]:
    """Splits with a ``transforms_{split}.json`` in ``root`` (train, val, test first)."""
    root = check_root(root)
    names = [p.name[len("transforms_") : -len(".json")] for p in root.glob("transforms_*.json")]
    names = [n for n in names if n]
    known = [s for s in _SPLIT_ORDER if s in names]
    return known + sorted(n for n in names if n not in _SPLIT_ORDER)


def check_root(root: str | Path) -> Path:
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


def read_json(meta_path: Path, root: Path, split: str) -> dict:
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


def read_angle(meta: dict, key: str, meta_path: Path, required: bool) -> float | None:
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


def read_transform(frame: dict, i: int, meta_path: Path) -> np.ndarray:
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


class HeaderOnly:
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
        read_image(path, i, meta_path)  # words the error (not an image, corrupt, ...)
        raise


def read_image(path: Path, i: int, meta_path: Path) -> Image.Image:
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
