"""Reading scene files, shared by the loaders: JSON transforms files, poses, angles and images
(whole, or only their headers), each failing with a message that names the file and the frame.
"""

from __future__ import annotations

import errno
import math
import numbers
import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nerfmine.errors import DataError
from nerfmine.json_files import read_json_file, shown

_SPLIT_ORDER = ("train", "val", "test")
# The largest magnitude a float32 holds: poses and intrinsics are used in float32 downstream, so
# a larger value in a file would turn into inf there.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# The image files the capture loaders list in a folder (by extension, any case).
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})


def available_splits(root: str | Path) -> list[str]:
    """Splits with a ``transforms_{split}.json`` in ``root`` (train, val, test first)."""
    root = check_root(root)
    names = [p.name[len("transforms_") : -len(".json")] for p in root.glob("transforms_*.json")]
    names = [n for n in names if n]
    known = [s for s in _SPLIT_ORDER if s in names]
    return known + sorted(n for n in names if n not in _SPLIT_ORDER)


def link_problem(path: Path) -> str | None:
    """Why ``path`` cannot be followed, when it is a loop of symbolic links (or lies below one)
    or a symbolic link to nothing; None otherwise (also when it simply does not exist)."""
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        return "is a loop of symbolic links (following them leads back to the start)"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a loop of symbolic links (following them leads back to the start)"
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    return None


def resolve_data_path(path: str | Path) -> Path:
    """``path`` made absolute with its symbolic links followed (what a run records), or a
    DataError when the links loop; a path that does not exist is returned as given, for the
    loader to report."""
    path = Path(path).expanduser()
    problem = link_problem(path)
    if problem:
        raise DataError(f"data path {path} {problem}; point it at the real scene folder or file.")
    return path.resolve()


def check_root(root: str | Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        problem = link_problem(root)
        if problem:
            raise DataError(f"data path {root} {problem}; point it at the real scene folder.")
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
    meta = read_json_file(meta_path, DataError, "transforms file")
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: expected a JSON object at the top level, got "
                        f"{type(meta).__name__}.")
    return meta


def finite_number(value) -> float | None:
    """``value`` as a float when it is a real number (not a bool) that a float32 holds; None
    for anything else: NaN, inf, strings, lists, None, and integers too large for a float
    (``math.isfinite`` raises OverflowError on those, so every check goes through here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        v = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return v if math.isfinite(v) and abs(v) <= FLOAT32_MAX else None


def read_angle(meta: dict, key: str, meta_path: Path, required: bool) -> float | None:
    if key not in meta:
        if required:
            raise DataError(
                f"{meta_path}: missing key '{key}' (horizontal field of view in radians)."
            )
        return None
    value = finite_number(meta[key])
    if value is None or not 0.0 < value < math.pi:
        raise DataError(
            f"{meta_path}: '{key}' must be an angle in radians in (0, pi), got {shown(meta[key])}."
        )
    return value


class MatrixError(ValueError):
    """A value is not the matrix of numbers expected; the message says how (it follows the
    field's name: "has shape [3, 3]", "holds NaN or inf values")."""


def nested_shape(value) -> list[int]:
    """The shape of nested lists, following the first item at each level (8 levels at most)."""
    dims: list[int] = []
    while isinstance(value, (list, tuple)) and len(dims) < 8:
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    return dims


def number_matrix(value, shape: tuple[int, ...]) -> np.ndarray:
    """``value`` (nested lists of numbers, as JSON gives them; or an array) as a float64 array
    of ``shape``, else a MatrixError saying what is wrong: the shape, an item that is not a
    number (strings and bools are refused, not converted), NaN or inf, or a number float32
    cannot hold. Walks the lists itself, so that neither a deep nesting nor a huge integer
    reaches numpy (which raises RecursionError or OverflowError on them)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    leaves: list = []

    def walk(v, dims):
        if not dims:
            leaves.append(v)
        elif isinstance(v, (list, tuple)) and len(v) == dims[0]:
            for item in v:
                walk(item, dims[1:])
        else:
            got = (f"has shape {nested_shape(value)}" if isinstance(value, (list, tuple))
                   else f"is {shown(value)}, not a list")
            raise MatrixError(got)

    walk(value, shape)
    for x in leaves:
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise MatrixError(f"holds {shown(x)}, not a number")
        try:
            v = float(x)
        except OverflowError:
            raise MatrixError(f"holds {shown(x)}, beyond float32's range") from None
        if not math.isfinite(v):
            raise MatrixError("holds NaN or inf values")
        if abs(v) > FLOAT32_MAX:
            raise MatrixError(f"holds {v:g}, beyond float32's range")
    return np.asarray(leaves, dtype=np.float64).reshape(shape)


# How far the upper-left 3x3 of a camera-to-world pose may be from a rotation (times a uniform
# scale): the spread of its singular values over the largest, 0 for a scaled rotation. Real
# exports drift by ~1e-6 (float32 arithmetic) and files rounded to 3 or 4 decimals by up to
# ~1e-3; all of that is numerical noise, corrected to the nearest rotation (silently up to
# ROTATION_DRIFT, with a note above it). Beyond ROTATION_TOLERANCE (1%: rays off by about half
# a degree, several pixels) the matrix is sheared or scaled unevenly on purpose or by mistake,
# and no choice of rotation reproduces what the file means, so it is refused.
ROTATION_TOLERANCE = 1e-2
ROTATION_DRIFT = 1e-3
# A pose closer than this to a rotation (entries of R^T R - I) is used exactly as stored.
_EXACT = 1e-5


def rotation_deviation(c2w: np.ndarray) -> tuple[float, float]:
    """(deviation, scale) of the upper-left 3x3 of ``c2w`` (finite, not singular): the spread
    of its singular values over the largest (0 for a rotation times a uniform scale; shear and
    uneven scale raise it) and their mean (1 for a rotation)."""
    s = np.linalg.svd(np.asarray(c2w, dtype=np.float64)[:3, :3], compute_uv=False)
    return float((s[0] - s[2]) / s[0]), float(s.mean())


def _columns(rot: np.ndarray) -> str:
    """The lengths of the columns of ``rot`` and the angles between them, in words."""
    norms = np.linalg.norm(rot, axis=0)
    unit = rot / norms
    angles = [math.degrees(math.acos(float(np.clip(unit[:, a] @ unit[:, b], -1.0, 1.0))))
              for a, b in ((0, 1), (1, 2), (0, 2))]
    return (f"columns of lengths {', '.join(f'{n:.4g}' for n in norms)} at angles "
            f"{', '.join(f'{a:.4g}' for a in angles)} degrees to each other")


def rotation_problem(c2w: np.ndarray) -> str | None:
    """Why the upper-left 3x3 of the camera-to-world ``c2w`` (float64, finite) is not usable
    as a camera's orientation, or None. Its columns are the camera's right, up and backward
    axes: a zero column, columns of wildly different lengths, or (nearly) dependent columns
    give a singular matrix that no ray or projection can be computed from (it cannot be
    inverted); the test is scale-free: the determinant of the columns normalised to length 1
    (+-1 for a rotation, 0 when singular). A matrix sheared or scaled unevenly by more than
    :data:`ROTATION_TOLERANCE` (see :func:`rotation_deviation`) is refused too: its rays would
    not be the ones the image was taken with. A rotation times a uniform scale, and drift
    within the tolerance, are accepted (:func:`orthonormalised` corrects them)."""
    rot = np.asarray(c2w, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(rot, axis=0)
    if not (norms > 0).all() or norms.min() < 1e-6 * norms.max():
        return (f"has a singular rotation part (upper-left 3x3): its columns have lengths "
                f"{', '.join(f'{n:.3g}' for n in norms)}")
    det = float(np.linalg.det(rot / norms))
    if abs(det) < 1e-6:
        return f"has a singular rotation part (upper-left 3x3; normalised determinant {det:.3g})"
    deviation, _ = rotation_deviation(rot)
    if deviation > ROTATION_TOLERANCE:
        return (f"is not a rotation: its upper-left 3x3 is sheared or scaled unevenly by "
                f"{deviation:.2%} ({_columns(rot)}; the spread of its singular values over the "
                f"largest is {deviation:.3g}, 0 for a rotation, and up to "
                f"{ROTATION_TOLERANCE:g} is taken for rounding and corrected). Re-export the "
                "poses without the shear or scale (a transform applied to the whole scene "
                "belongs in the translations and in 'scale'/'offset'), or replace the 3x3 by "
                "its nearest rotation (U @ Vt of its SVD) if you know it is only noise")
    return None


def orthonormalised(c2w: np.ndarray) -> np.ndarray:
    """``c2w`` (float64 [4, 4] or [3, 4], its rotation part accepted by
    :func:`rotation_problem`) with the upper-left 3x3 replaced by the nearest rotation (the
    orthogonal factor of its polar decomposition, U @ Vt of its SVD; a reflection stays one):
    drift and a uniform scale removed. Ray directions are normalised, so this changes no ray of
    a uniformly scaled pose. A matrix within float32 noise of a rotation is returned as given,
    so that exact data loads bit for bit."""
    m = np.array(c2w, dtype=np.float64)
    rot = m[:3, :3]
    if np.abs(rot.T @ rot - np.eye(3)).max() <= _EXACT:
        return m
    u, _, vt = np.linalg.svd(rot)
    m[:3, :3] = u @ vt
    return m


class PoseFixes:
    """Poses whose rotation part a loader corrected (:func:`orthonormalised`), gathered into
    notes: drift beyond :data:`ROTATION_DRIFT`, and uniform scales beyond
    :data:`ROTATION_TOLERANCE`."""

    def __init__(self) -> None:
        self.total = 0
        self.drift: list[tuple[str, float]] = []  # (which pose, deviation)
        self.scaled: list[tuple[str, float]] = []  # (which pose, scale)

    def fix(self, c2w: np.ndarray, which: str) -> np.ndarray:
        """``c2w`` (checked by :func:`rotation_problem`) orthonormalised; ``which`` names it
        in the note ("frames[3] ('a.png')")."""
        self.total += 1
        deviation, scale = rotation_deviation(c2w)
        if deviation > ROTATION_DRIFT:
            self.drift.append((which, deviation))
        if abs(scale - 1.0) > ROTATION_TOLERANCE:  # smaller ones go with the drift
            self.scaled.append((which, scale))
        return orthonormalised(c2w)

    def notes(self, source) -> list[str]:
        out = []
        if self.drift:
            worst = max(self.drift, key=lambda d: d[1])
            out.append(f"{source}: the rotation part of {len(self.drift)} of {self.total} poses "
                       f"is sheared or scaled unevenly by up to {worst[1]:.2%} (the most: "
                       f"{worst[0]}), within the {ROTATION_TOLERANCE:.0%} taken for rounding "
                       "or numerical drift; each is replaced by its nearest rotation.")
        if self.scaled:
            lo = min(s for _, s in self.scaled)
            hi = max(s for _, s in self.scaled)
            size = f"{lo:.4g}" if math.isclose(lo, hi, rel_tol=1e-3) else f"{lo:.4g} to {hi:.4g}"
            out.append(f"{source}: the rotation part of {len(self.scaled)} of {self.total} poses "
                       f"is scaled uniformly by {size} (first: {self.scaled[0][0]}); the scale is "
                       "removed (rays keep their directions; camera positions are used as "
                       "given).")
        return out


ROTATION_HINT = ("expected a rotation: its columns are the camera's right, up and backward axes "
                 "in world coordinates, three orthogonal unit vectors")


def read_pose(frame: dict, i: int, meta_path: Path, fixes: PoseFixes | None = None
              ) -> np.ndarray:
    """The camera-to-world ``transform_matrix`` of ``frames[i]``: float64 [4, 4], its rotation
    part checked and orthonormalised (``fixes`` records what was corrected)."""
    rel = frame.get("file_path")
    if "transform_matrix" not in frame:
        raise DataError(
            f"{meta_path}: frames[{i}] ('{rel}') is missing key 'transform_matrix' (a 4x4 list)."
        )
    try:
        m = number_matrix(frame["transform_matrix"], (4, 4))
    except MatrixError as e:
        raise DataError(f"{meta_path}: frames[{i}] ('{rel}') transform_matrix {e}; expected a "
                        "4x4 list of finite numbers (the rows of a camera-to-world matrix)."
                        ) from None
    problem = rotation_problem(m)
    if problem:
        raise DataError(f"{meta_path}: frames[{i}] ('{rel}') transform_matrix {problem}; "
                        f"{ROTATION_HINT}.")
    return fixes.fix(m, f"frames[{i}] ('{rel}')") if fixes is not None else orthonormalised(m)


def read_transform(frame: dict, i: int, meta_path: Path, fixes: PoseFixes | None = None
                   ) -> np.ndarray:
    """:func:`read_pose` in float32."""
    return read_pose(frame, i, meta_path, fixes).astype(np.float32)


def fully_transparent(pixels: np.ndarray) -> bool:
    """Whether the decoded RGBA image ``pixels`` [H, W, 4] uint8 has alpha 0 at every pixel.
    Three pixels answer for almost every image (an RGB photo has alpha 255 everywhere, an
    object on a transparent background is opaque at its centre); only the rest costs one pass
    over the alpha channel."""
    alpha = pixels[..., 3]
    h, w = alpha.shape
    if alpha[0, 0] or alpha[h // 2, w // 2] or alpha[h - 1, w - 1]:
        return False
    return not alpha.any()


def transparency_notes(transparent: list[Path], n: int, split: str) -> list[str]:
    """The note for the images of a split (``n`` decoded) found fully transparent."""
    if not transparent:
        return []
    folder = Path(os.path.commonpath([str(p.parent) for p in transparent]))
    if len(transparent) == n:
        return [f"every image of split '{split}' in {folder} ({n}) is fully transparent (alpha "
                "0 at every pixel): the scene will train to empty space. Check how the images "
                "were exported (an alpha channel written as 0, or a mask applied inverted); "
                "images without an alpha channel are read as opaque."]
    first = ", ".join(p.name for p in transparent[:3]) + (" ..." if len(transparent) > 3 else "")
    return [f"{len(transparent)} of {n} images of split '{split}' in {folder} are fully "
            f"transparent (alpha 0 at every pixel; first: {first}): they show empty space from "
            "their viewpoints, and the scene will learn that."]


def find_image(root: Path, rel: str, meta_path: Path, where: str) -> Path | None:
    """``root / rel``, else ``root / (rel + ".png")`` (Blender-style file_path without an
    extension), whichever is a file; None when neither is. A name no file can have (a NUL
    character, characters the file system cannot encode, too long) is a DataError naming
    ``where`` (e.g. "frames[3]") in ``meta_path``."""
    if "\x00" in rel:
        raise DataError(f"{meta_path}: {where} file_path {shown(rel)} holds a NUL character; "
                        "it must be the image's path relative to the file's folder.")
    for candidate in (root / rel, root / (rel + ".png")):
        try:
            if candidate.is_file():
                return candidate
        except UnicodeEncodeError:
            raise DataError(f"{meta_path}: {where} file_path {shown(rel)} holds characters no "
                            "file name can have here; it must be the image's path relative to "
                            "the file's folder.") from None
        except OSError as exc:  # e.g. ENAMETOOLONG
            raise DataError(f"{meta_path}: {where} file_path {shown(rel)} cannot be looked up "
                            f"({exc.strerror or exc}).") from None
    return None


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
    except Exception as exc:  # noqa: BLE001 - Pillow's own fuzzers show any type; worded below
        raise image_error(exc, path, i, meta_path) from None


# Pixel modes of more than 8 bits per channel (16-bit PNGs, float TIFFs): converting them to
# RGBA would clip, not scale, so they are refused.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


def read_image(path: Path, i: int, meta_path: Path) -> Image.Image:
    """Open one image as 8-bit RGBA (RGB gets alpha 255)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in _WIDE_MODES:
                mode = im.mode
            else:
                return im.convert("RGBA")
    except Exception as exc:  # noqa: BLE001 - Pillow's own fuzzers show any type; worded below
        raise image_error(exc, path, i, meta_path) from None
    raise DataError(f"{path} (frames[{i}] of {meta_path.name}) has pixel mode {mode}; expected "
                    "an 8-bit RGB or RGBA image.")


def image_error(exc: Exception, path: Path, i: int, meta_path: Path) -> Exception:
    """The DataError for an image Pillow could not open or decode (``exc``), naming the file.

    Pillow raises many exception types on damaged files (OSError, SyntaxError, ValueError,
    EOFError, struct.error, IndexError, ...; its own fuzz tests catch every Exception), so
    every one is worded here with its type and text. Errors of nerfmine pass through."""
    where = f"{path} (frames[{i}] of {meta_path.name})"
    if isinstance(exc, DataError):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else None
        size = "too large" if pixels is None else (
            f"{pixels} pixels" + (f" ({pixels / 1e6:.0f} megapixels)" if pixels >= 1e6 else ""))
        return DataError(
            f"{where} is {size}, more than Pillow's limit of {2 * Image.MAX_IMAGE_PIXELS} pixels "
            "for one image (PIL.Image.MAX_IMAGE_PIXELS guards against decompression bombs), so "
            "it was not decoded. Shrink the image files (e.g. mogrify -resize 25%; for an LLFF "
            "scene put them in images_4/ and pass --downscale 4, which reads that folder), or, "
            "if you trust them, raise PIL.Image.MAX_IMAGE_PIXELS before loading.")
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{where} does not exist (it was removed while loading?).")
    if isinstance(exc, MemoryError):
        return DataError(f"{where}: not enough memory to decode it; shrink the image files "
                         "or free memory.")
    if isinstance(exc, UnidentifiedImageError):
        return DataError(f"{where} is not an image file; expected a PNG (RGBA or RGB) or JPEG.")
    return DataError(f"{where} is corrupt or unreadable ({type(exc).__name__}: "
                     f"{str(exc)[:200]}). Re-export or re-download the image.")


def prescaled_folder(images_dir: Path, factor: int) -> Path:
    """The folder of ``images_dir``'s images shrunk ``factor`` times: its sibling
    ``{name}_{factor}`` (``images_2/`` beside ``images/``: the layout of LLFF, Mip-NeRF 360,
    nerfstudio's ``ns-process-data`` and ``nerfmine process``)."""
    return images_dir.parent / f"{images_dir.name}_{factor}"


def prescaled_images(images_dir: Path, factor: int,
                     wanted: list[tuple[Path, tuple[int, int]]] | tuple[int, tuple[int, int]],
                     notes: list[str], *, rounded: bool = False, instead: str | None = None
                     ) -> list[Path] | None:
    """The pre-downscaled copies, in :func:`prescaled_folder`, of the originals ``wanted`` in
    ``images_dir`` to read for ``--downscale factor`` instead of box-filtering the originals;
    None when there are none to use (``factor`` 1, or no such folder), or when the folder
    cannot stand in for the originals: then a note in ``notes`` says why and what is done
    ``instead`` (default: the originals are box-filtered).

    ``wanted`` is either a list of (original: a file below ``images_dir``, its (width,
    height)), each of which the folder must hold under the same path relative to it; or
    (count, (width, height)): the folder's image files in name order stand for ``count``
    originals of that size, paired by position (LLFF, whose ``images_N/`` files are often
    named unlike ``images/``'s), and there must be exactly ``count`` of them.

    The header of every copy (not its pixels) must give exactly the size a downscale gives:
    ``(w // factor, h // factor)`` of its original, so that the camera intrinsics, scaled by
    ``(w // factor) / w`` and ``(h // factor) / h``, are those of box-filtering the originals
    and only the resampling filter differs. ``rounded`` also accepts ``w / factor`` rounded up
    per axis (the copies then must share one size): ImageMagick's ``-resize 25%``, which LLFF's
    and Mip-NeRF 360's ``images_N/`` come from, rounds half up (4946 -> 1237 for factor 4)."""
    folder = prescaled_folder(images_dir, factor)
    if factor <= 1 or not folder.is_dir():
        return None
    if isinstance(wanted, tuple):
        count, size = wanted
        names = sorted(p.name for p in folder.iterdir()
                       if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if len(names) != count:
            problem = f"it holds {len(names)} image files, not the {count} needed"
            return _not_prescaled(folder, factor, problem, images_dir, notes, instead)
        wanted = [(images_dir / name, size) for name in names]
    rels = []
    for original, _ in wanted:
        try:
            rel = Path(original).relative_to(images_dir)
        except ValueError:
            rel = None
        if rel is None or ".." in rel.parts:
            problem = f"{original} is not inside {images_dir}"
            return _not_prescaled(folder, factor, problem, images_dir, notes, instead)
        rels.append(rel.as_posix())
    files = [folder / rel for rel in rels]
    missing = [rel for rel, path in zip(rels, files) if not path.is_file()]
    if missing:
        problem = (f"{len(missing)} of the {len(files)} images are missing from it (first: "
                   f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
        return _not_prescaled(folder, factor, problem, images_dir, notes, instead)
    first_size = None
    for rel, (_, (w, h)), path in zip(rels, wanted, files):
        try:
            with Image.open(path) as im:
                size = im.size
        except Exception as exc:  # noqa: BLE001 - any Pillow failure: the originals are read
            problem = f"{rel} in it cannot be read ({type(exc).__name__}: {str(exc)[:100]})"
            return _not_prescaled(folder, factor, problem, images_dir, notes, instead)
        floor = (w // factor, h // factor)
        ceil = (-(-w // factor), -(-h // factor))
        ok = size == floor or (rounded and all(lo <= s <= hi for s, lo, hi in
                                               zip(size, floor, ceil)))
        if ok and rounded and first_size not in (None, size):
            problem = (f"its images have mixed sizes ({first_size[0]}x{first_size[1]} and "
                       f"{size[0]}x{size[1]} for {rel})")
            return _not_prescaled(folder, factor, problem, images_dir, notes, instead)
        if not ok:
            expected = f"{floor[0]}x{floor[1]}" + (
                f" (or {ceil[0]}x{ceil[1]}, rounded up)" if rounded and ceil != floor else "")
            problem = (f"{rel} in it is {size[0]}x{size[1]}, not {expected}: its original is "
                       f"{w}x{h}, so downscale {factor} gives {floor[0]}x{floor[1]}")
            return _not_prescaled(folder, factor, problem, images_dir, notes, instead)
        first_size = size
    return files


def _not_prescaled(folder: Path, factor: int, problem: str, images_dir: Path,
                   notes: list[str], instead: str | None) -> None:
    notes.append(f"{folder} is not used for downscale {factor}: {problem}; "
                 + (instead or f"the images of {images_dir} are box-filtered instead") + ".")
    return None
