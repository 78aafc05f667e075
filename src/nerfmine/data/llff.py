"""Loader for LLFF and Mip-NeRF 360 scenes: ``poses_bounds.npy`` beside ``images/`` and the
pre-downscaled ``images_2/``, ``images_4/``, ``images_8/``.

Conventions (LLFF's ``imgs2poses.py`` writes the file; Mip-NeRF 360 ships its scenes so):

- ``poses_bounds.npy`` is an [N, 17] array, one row per image in the order of the sorted file
  names: a 3x5 matrix (row-major) ``[R | t | hwf]`` and the near and far bounds of the scene's
  depth in that view. ``R``'s columns are the camera's down, right and backward axes in world
  coordinates (LLFF's "DRB"), ``t`` the camera centre, ``hwf`` the height, width and focal
  length in pixels of the full-resolution images. The OpenGL camera-to-world pose nerfmine uses
  (x right, y up, looking down -z) is ``[right, up, back] = [R[:, 1], -R[:, 0], R[:, 2]]``.
- Images: the i-th image file of ``images/`` by name is pose i. ``downscale`` N reads
  ``images_N/`` when it exists and fits (the same views N times smaller, as the benchmarks use
  them) instead of shrinking ``images/``: :func:`nerfmine.data.files.prescaled_images`, with
  its i-th file by name as pose i (LLFF's minify names them unlike ``images/``), one per pose,
  each ``W / N`` by ``H / N`` of the full size in ``poses_bounds.npy`` rounded down or up
  (ImageMagick's ``-resize``, which made LLFF's and Mip-NeRF 360's, rounds half up); otherwise
  a note says why and ``images/`` is box-filtered. The focal length scales by the images'
  actual width over the full width, the principal point is the image centre.
- Placement: the poses are centred at the mean camera position and divided by the largest
  camera distance from it (as COLMAP models are), then mapped with instant-ngp's scale 0.33
  and offset 0.5. The modelled box must hold what the cameras see: ``aabb_scale`` is the
  smallest power of two whose box contains every view's far bound around the cameras, at most
  :data:`MAX_AUTO_AABB_SCALE` (instant-ngp's advice for unbounded captures); a note says so.
- Splits: every ``holdout_every``-th image by name is held out ("test"), as the other capture
  loaders and the benchmarks (Mip-NeRF 360's every 8th) do.
"""

from __future__ import annotations

import tokenize
from pathlib import Path

import numpy as np
from PIL import Image

from nerfmine.data.capture import (
    DEFAULT_OFFSET,
    DEFAULT_SCALE,
    MAX_AUTO_AABB_SCALE,
    aabb_scale_for_extent,
    capture_scene,
    coincidence_note,
    holdout_indices,
    pose_centre_and_radius,
)
from nerfmine.data.files import (
    FLOAT32_MAX,
    IMAGE_EXTS,
    ROTATION_HINT,
    HeaderOnly,
    PoseFixes,
    fully_transparent,
    image_size,
    placeholder_images,
    prescaled_folder,
    prescaled_images,
    read_image,
    rotation_problem,
    transparency_notes,
)
from nerfmine.data.scene_data import SceneData
from nerfmine.errors import DataError

POSES_FILE = "poses_bounds.npy"


def is_llff(folder: Path) -> bool:
    """A folder with ``poses_bounds.npy`` and at least one images folder."""
    folder = Path(folder)
    return (folder / POSES_FILE).is_file() and any(
        p.is_dir() and p.name.startswith("images") for p in folder.iterdir())


def llff_to_opengl(poses: np.ndarray) -> np.ndarray:
    """[N, 3, 5] LLFF rows ``[R | t | hwf]`` (R's columns down, right, back) -> [N, 4, 4] OpenGL
    camera-to-world poses (columns right, up, back; the centre in the last column)."""
    rot = poses[:, :, :3]
    c2w = np.zeros((poses.shape[0], 4, 4))
    c2w[:, :3, 0] = rot[:, :, 1]  # right
    c2w[:, :3, 1] = -rot[:, :, 0]  # up = -down
    c2w[:, :3, 2] = rot[:, :, 2]  # back
    c2w[:, :3, 3] = poses[:, :, 3]
    c2w[:, 3, 3] = 1.0
    return c2w


def _images_folder(root: Path, downscale: int, count: int, full_size: tuple[int, int],
                   notes: list[str]) -> tuple[Path, list[Path] | None]:
    """(folder to read, its image files when they are ``images_{downscale}/``'s, already
    downscaled; None for ``images/``, whose files the caller lists)."""
    images = root / "images"
    has_images = images.is_dir()
    before = len(notes)
    files = prescaled_images(images, downscale, (count, full_size), notes, rounded=True,
                             instead=None if has_images else "there is no images/ folder "
                             "to downscale instead")
    if files is not None:
        return prescaled_folder(images, downscale), files
    if has_images:
        return images, None
    if len(notes) > before:  # images_N/ is there but does not fit
        raise DataError(f"{root}: {notes.pop()} Put the full-size images in images/, or fix "
                        f"{prescaled_folder(images, downscale).name}/.")
    raise DataError(f"{root}: {POSES_FILE} is here but no images/ folder"
                    + (f" (nor images_{downscale}/)" if downscale > 1 else "")
                    + "; put the images beside it as LLFF's imgs2poses.py expects.")


# What a .npy header can fail with: numpy words most problems as ValueError, but a damaged
# header also gives EOFError (too short), SyntaxError/RecursionError/MemoryError (its Python
# literal), tokenize.TokenError (an unbalanced bracket in it) or TypeError.
_NPY_ERRORS = (OSError, ValueError, EOFError, SyntaxError, RecursionError, MemoryError,
               TypeError, tokenize.TokenError)


def read_poses_bounds(path: Path) -> np.ndarray:
    """The [N, 17] float64 array of ``poses_bounds.npy``, checked before it is read: the
    header's shape and type must fit the file (a damaged header claiming 2^60 rows is refused
    without allocating), the values must be real numbers that float32 holds."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except _NPY_ERRORS as exc:
        raise DataError(f"{path}: not a NumPy .npy file ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); LLFF's imgs2poses.py writes it with np.save."
                        ) from None
    if dtype.kind not in "fiu" or dtype.fields is not None or dtype.subdtype is not None:
        raise DataError(f"{path}: holds values of type {dtype}; expected floating-point numbers.")
    if len(shape) != 2 or shape[1] != 17 or shape[0] == 0:
        raise DataError(f"{path}: expected an [N, 17] array (a 3x5 pose and 2 bounds per "
                        f"image), got shape {list(shape)}")
    need = shape[0] * shape[1] * dtype.itemsize
    if offset + need > size:
        raise DataError(f"{path}: its header says {shape[0]} rows ({need} bytes of data) but "
                        f"the file holds {size - offset} bytes after it; the file is truncated "
                        "or damaged. Re-run imgs2poses.py or copy it again.")
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            flat = np.fromfile(f, dtype=dtype, count=shape[0] * shape[1])
    except _NPY_ERRORS as exc:
        raise DataError(f"{path}: cannot read its values ({type(exc).__name__}: "
                        f"{str(exc)[:200]})") from None
    data = flat.reshape(shape, order="F" if fortran else "C").astype(np.float64)
    if not np.isfinite(data).all():
        raise DataError(f"{path}: holds NaN or inf values")
    if np.abs(data).max() > FLOAT32_MAX:
        raise DataError(f"{path}: holds values beyond float32's range (up to "
                        f"{np.abs(data).max():.3g}); poses and bounds must be ordinary numbers.")
    return data


def load_llff(root: str | Path, split: str = "train", downscale: int = 1,
              holdout_every: int = 8, decode: bool = True) -> SceneData:
    """A split of an LLFF / Mip-NeRF 360 scene folder (see the module docstring)."""
    root = Path(root)
    path = root / POSES_FILE
    data = read_poses_bounds(path)
    poses = data[:, :15].reshape(-1, 3, 5)  # [N, 3, 5]
    bounds = data[:, 15:]  # [N, 2] near, far
    full_h, full_w, focal = (float(v) for v in poses[0, :, 4])
    if not (full_h > 0 and full_w > 0 and focal > 0):
        raise DataError(f"{path}: row 0's height, width and focal length (the pose's last "
                        f"column) must be > 0, got {full_h:g}, {full_w:g}, {focal:g}.")
    notes: list[str] = []
    full_size = (max(1, round(full_w)), max(1, round(full_h)))
    folder, files = _images_folder(root, downscale, len(poses), full_size, notes)
    prescaled = files is not None
    if files is None:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if len(files) != len(poses):
        raise DataError(f"{folder}: {len(files)} images but {path} has {len(poses)} poses; "
                        "LLFF pairs the i-th image by name with the i-th pose, so the counts "
                        "must agree (re-run imgs2poses.py, or remove the extra images).")
    c2w = llff_to_opengl(poses)
    fixes = PoseFixes()
    for i, pose in enumerate(c2w):
        problem = rotation_problem(pose)
        if problem:
            raise DataError(f"{path}: row {i} (pose of {files[i].name}) {problem}; "
                            f"{ROTATION_HINT} (LLFF stores them as down, right, back).")
        c2w[i] = fixes.fix(pose, f"row {i} ({files[i].name})")
    notes += fixes.notes(path)
    coincident = coincidence_note(c2w, path, "image")
    if coincident:
        notes.append(coincident)
    # Normalised in float64: translations up to float32's largest value neither overflow nor
    # lose the cameras' spread here; the float32 poses kept are within radius 1.
    centre, radius = pose_centre_and_radius(c2w[:, :3, 3])
    c2w[:, :3, 3] = (c2w[:, :3, 3] - centre) / radius
    far = float(bounds[:, 1].max()) / radius
    aabb_scale = aabb_scale_for_extent(1.0 + far)
    notes.append(f"LLFF scene normalised: centred at the mean camera position, divided by "
                 f"{radius:.4g}; far bound {far:.3g} of that, so aabb_scale {aabb_scale:g}"
                 + (" (capped)" if aabb_scale == MAX_AUTO_AABB_SCALE else "") + ".")

    chosen = holdout_indices(len(files), split, holdout_every, root, "image")
    first = image_size(files[chosen[0]], chosen[0], path)
    if prescaled:
        out_size = first
    else:
        if first[0] // downscale < 1 or first[1] // downscale < 1:
            raise DataError(f"downscale={downscale} is larger than the images of {folder} "
                            f"({first[0]}x{first[1]}).")
        out_size = (first[0] // downscale, first[1] // downscale)
    sx = out_size[0] / full_w
    n = len(chosen)
    images = (np.empty((n, out_size[1], out_size[0], 4), dtype=np.uint8) if decode
              else placeholder_images(n, out_size[1], out_size[0]))
    transparent: list[Path] = []
    for k, i in enumerate(chosen):
        img = read_image(files[i], i, path) if decode else HeaderOnly(
            image_size(files[i], i, path))
        size = img.size if prescaled else (img.size[0] // downscale, img.size[1] // downscale)
        if size != out_size:
            raise DataError(f"{files[i]} is {img.size[0]}x{img.size[1]}; every image of "
                            f"{folder} must share one size.")
        if decode:
            if not prescaled and downscale > 1:
                img = img.resize(out_size, Image.BOX)
            images[k] = np.asarray(img)
            if fully_transparent(images[k]):
                transparent.append(files[i])
    notes += transparency_notes(transparent, n if decode else 0, split)
    fx = focal * sx
    if not fx <= FLOAT32_MAX:
        raise DataError(f"{path}: row 0's focal length {focal:g} for a width of {full_w:g} "
                        f"gives {fx:g} pixels at the images' width {out_size[0]}; check the "
                        "pose's last column (height, width, focal length).")
    intrinsics = np.tile([fx, fx, 0.5 * out_size[0], 0.5 * out_size[1]], (n, 1))
    distortion = np.zeros((n, 6))
    return capture_scene(images, c2w[chosen], intrinsics, distortion, "pinhole",
                         [files[i] for i in chosen], split, out_size, DEFAULT_SCALE,
                         DEFAULT_OFFSET, aabb_scale, "llff", notes)
