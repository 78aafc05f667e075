"""Loader for a COLMAP sparse model (cameras/images/points3D, ``.bin`` or ``.txt``) via pycolmap.

pycolmap is an optional extra: ``pip install 'nerfmine[colmap]'``. It is imported only when a
model is loaded, so the rest of nerfmine works without it.

Conventions (the result is a :class:`~nerfmine.data.scene_data.SceneData` like every loader's):

- Poses: COLMAP stores ``cam_from_world`` (world-to-camera, OpenCV camera axes: x right, y down,
  camera looking down +z). The camera-to-world pose is ``[R^T | -R^T t]`` (the camera centre is
  ``-R^T t``), and its y and z axes are negated to give the OpenGL camera-to-world pose used by
  nerfmine (camera looks down -z, +y up): the OpenGL -z axis is COLMAP's viewing direction.
  The world axes stay COLMAP's (no up-axis alignment).
- Normalisation: the SceneData world is COLMAP's world translated so the mean camera centre (of
  all registered images found on disk, whatever the split, so every split shares one world) is
  the origin and divided by the largest camera distance from that centre, so the cameras lie in
  a sphere of radius 1.0 (a single camera keeps scale 1). ``scale`` 0.33 and ``offset``
  (0.5, 0.5, 0.5) are instant-ngp's defaults: the unit cube then holds world points within
  about 1.5 of the camera centre, the cameras at distance <= 0.33 from the cube's centre.
  ``aabb_scale`` is the smallest power of two whose box holds, for every image that observes
  at least 200 sparse points, 99.5% of the points it observes (LLFF's far bound, a percentile
  of each view's point depths, taken per axis; at most 16), so that the background each view
  sees is modelled; without such an image (a model whose points carry no observations, say)
  it holds 99% of all points, and a model without points gets 1. Notes record the centre,
  radius and box used.
- Camera models (intrinsics in pixels, COLMAP's pixel centres at integer + 0.5 as in the rest of
  nerfmine; coefficients as ``(k1, k2, k3, k4, p1, p2)``):
  SIMPLE_PINHOLE (f, cx, cy) and PINHOLE (fx, fy, cx, cy) -> "pinhole";
  SIMPLE_RADIAL (f, cx, cy, k), RADIAL (f, cx, cy, k1, k2) and OPENCV (fx, fy, cx, cy, k1, k2,
  p1, p2) -> "opencv"; OPENCV_FISHEYE (fx, fy, cx, cy, k1..k4), SIMPLE_RADIAL_FISHEYE
  (f, cx, cy, k) and RADIAL_FISHEYE (f, cx, cy, k1, k2) -> "fisheye" (equidistant theta model).
  A scene with perspective and fisheye cameras is refused; pinhole cameras mixed with distorted
  perspective ones become "opencv" with zero coefficients. Other models raise DataError.
- Images: ``images_dir / image.name``. Only registered images (``reg_image_ids()``) are used;
  image files in ``images_dir`` without a registered image are listed in a note. Registered
  images missing on disk raise DataError, or are dropped with ``skip_missing`` (a note), before
  the hold-out, like :func:`nerfmine.data.transforms.load_transforms`.
- Splits: registered images sorted by name; "test" holds every ``holdout_every``-th (sorted
  index % holdout_every == 0), "train" the rest, "all" every image.
- Downscale: ``downscale`` N scales the intrinsics by ``(w // N) / w`` and ``(h // N) / h`` (the
  images become ``w // N`` by ``h // N``) and reads ``images_dir``'s sibling ``{name}_N/``
  (``images_2/`` beside ``images/``, as ``nerfmine process`` and nerfstudio write it) when it
  holds every registered image found under the same name at exactly that size
  (:func:`nerfmine.data.files.prescaled_images`; else a note says why); otherwise the
  originals are box-filtered. Either way the split, intrinsics and size are the same; only the
  resampling filter differs. The originals are still needed (they decide which images exist,
  and their sizes are checked against the cameras).
"""

from __future__ import annotations

import functools
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from nerfmine.data.capture import (
    DEFAULT_OFFSET,
    DEFAULT_SCALE,
    aabb_scale_from_points,
    capture_scene,
    check_capture_args,
    coincidence_note,
    handle_missing,
    holdout_indices,
    pose_centre_and_radius,
)
from nerfmine.data.files import (
    FLOAT32_MAX,
    IMAGE_EXTS,
    ROTATION_HINT,
    HeaderOnly,
    downscaled_size,
    find_image,
    finite_number,
    fully_transparent,
    image_size,
    orthonormalised,
    placeholder_images,
    prescaled_images,
    read_image,
    rotation_problem,
    transparency_notes,
)
from nerfmine.data.scene_data import SceneData
from nerfmine.errors import DataError

# model name -> (our camera model, function params -> (fx, fy, cx, cy), (k1, k2, k3, k4, p1, p2))
_MODELS = {
    "SIMPLE_PINHOLE": ("pinhole", lambda p: ((p[0], p[0], p[1], p[2]), (0, 0, 0, 0, 0, 0))),
    "PINHOLE": ("pinhole", lambda p: ((p[0], p[1], p[2], p[3]), (0, 0, 0, 0, 0, 0))),
    "SIMPLE_RADIAL": ("opencv", lambda p: ((p[0], p[0], p[1], p[2]), (p[3], 0, 0, 0, 0, 0))),
    "RADIAL": ("opencv", lambda p: ((p[0], p[0], p[1], p[2]), (p[3], p[4], 0, 0, 0, 0))),
    "OPENCV": (
        "opencv",
        lambda p: ((p[0], p[1], p[2], p[3]), (p[4], p[5], 0, 0, p[6], p[7])),
    ),
    "OPENCV_FISHEYE": (
        "fisheye",
        lambda p: ((p[0], p[1], p[2], p[3]), (p[4], p[5], p[6], p[7], 0, 0)),
    ),
    "SIMPLE_RADIAL_FISHEYE": (
        "fisheye",
        lambda p: ((p[0], p[0], p[1], p[2]), (p[3], 0, 0, 0, 0, 0)),
    ),
    "RADIAL_FISHEYE": ("fisheye", lambda p: ((p[0], p[0], p[1], p[2]), (p[3], p[4], 0, 0, 0, 0))),
}
# OpenCV camera axes (x right, y down, z forward) -> OpenGL (x right, y up, z backward)
_CV_TO_GL = np.diag([1.0, -1.0, -1.0])


def _import_pycolmap():
    try:
        import pycolmap
    except ImportError as e:
        raise DataError(
            "reading a COLMAP model needs pycolmap, which is not installed: "
            "pip install 'nerfmine[colmap]' (or pip install pycolmap)."
        ) from e
    return pycolmap


def load_colmap(
    model_dir: str | Path,
    images_dir: str | Path,
    split: str = "train",
    downscale: int = 1,
    holdout_every: int = 8,
    skip_missing: bool = False,
    decode: bool = True,
) -> SceneData:
    """Load a COLMAP sparse model (e.g. ``sparse/0``) and its images (e.g. ``images/``).

    Returns the split's images with OpenGL camera-to-world poses in the normalised world (see
    the module docstring), per-image ``intrinsics`` [N, 4] and ``distortion`` [N, 6] (None for
    "pinhole"), ``camera_model``, ``dialect`` "colmap", ``scale`` 0.33, ``offset`` 0.5 and
    ``notes``. ``SceneData.fx/fy/cx/cy`` hold the first image's intrinsics. ``decode=False``
    reads the image headers only (``images`` is a ``meta`` placeholder of the split's shape).
    """
    model_dir = Path(model_dir).expanduser()
    images_dir = Path(images_dir).expanduser()
    check_capture_args(f"{model_dir} is a COLMAP model", split, downscale, holdout_every,
                       "image")
    if not model_dir.is_dir():
        raise DataError(
            f"COLMAP model folder {model_dir} does not exist; pass the folder that holds "
            "cameras.bin/images.bin (or the .txt files), e.g. sparse/0."
        )
    if not images_dir.is_dir():
        raise DataError(f"COLMAP images folder {images_dir} does not exist.")
    # the file named in per-image error messages
    model_file = next(
        (model_dir / n for n in ("images.bin", "images.txt") if (model_dir / n).is_file()),
        model_dir / "images.bin",
    )
    registered, cameras, points, observations = _read_model(model_dir, model_file)
    notes: list[str] = []
    if not registered:
        raise DataError(f"the COLMAP model in {model_dir} has no registered images.")
    registered.sort(key=lambda im: im.name)
    names = {im.image_id: im.name for im in registered}
    reg_names = set(names.values())

    # image files on disk without a pose
    on_disk = sorted(
        p.relative_to(images_dir).as_posix()
        for p in images_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS
    )
    unposed = [n for n in on_disk if n not in reg_names]
    if unposed:
        notes.append(
            f"{len(unposed)} of {len(on_disk)} image files in {images_dir} have no pose in the "
            f"COLMAP model (not registered) and are not used (first: {', '.join(unposed[:3])}"
            f"{' ...' if len(unposed) > 3 else ''})."
        )

    on_disk_of = {im.image_id: find_image(images_dir, names[im.image_id], model_file,
                                          f"image {im.image_id}") for im in registered}
    found = [im for im in registered if on_disk_of[im.image_id] is not None]
    missing = [names[im.image_id] for im in registered if on_disk_of[im.image_id] is None]
    handle_missing(model_dir, "registered images",
                   f"registered images do not exist in {images_dir}", len(registered), missing,
                   len(found), skip_missing, notes,
                   f"image names are resolved relative to {images_dir}")

    # cameras of every image found (whatever the split), so all splits agree on the model
    cams: dict[int, tuple[str, tuple, tuple]] = {}
    for im in found:
        if im.camera_id not in cams:
            cams[im.camera_id] = _camera(cameras[im.camera_id], im.camera_id, model_dir)
    kinds = {kind for kind, _, _ in cams.values()}
    if "fisheye" in kinds and len(kinds) > 1:
        raise DataError(
            f"{model_dir}: the model mixes fisheye and perspective cameras "
            f"({', '.join(f'camera {c}: {cams[c][0]}' for c in sorted(cams))}); one scene needs "
            "one kind of lens."
        )
    camera_model = (
        "fisheye" if "fisheye" in kinds else ("opencv" if "opencv" in kinds else "pinhole")
    )

    # poses in COLMAP's world, then normalised with every found image
    c2w_all = np.stack([_c2w_opengl(im, model_file) for im in found])  # [M, 4, 4] float64
    coincident = coincidence_note(c2w_all, model_dir, "registered image")
    if coincident:
        notes.append(coincident)
    centres = c2w_all[:, :3, 3]
    centre, radius = pose_centre_and_radius(centres)
    c2w_all[:, :3, 3] = (centres - centre) / radius
    notes.append(
        "COLMAP world normalised: centred at the mean camera position "
        f"({centre[0]:.4g}, {centre[1]:.4g}, {centre[2]:.4g}) and divided by {radius:.4g} so the "
        "cameras lie within radius 1; scale 0.33, offset 0.5 (instant-ngp's defaults)."
    )
    aabb_scale = aabb_scale_from_points(points, observations,
                                        [im.image_id for im in found], centre, radius, notes)

    chosen = holdout_indices(len(found), split, holdout_every, model_dir, "registered image")

    first = cameras[found[chosen[0]].camera_id]
    w, h = first.width, first.height
    first_path = on_disk_of[found[chosen[0]].image_id]
    first_size = image_size(first_path, chosen[0], model_file)
    if first_size != (w, h):  # before the split's images are allocated at the camera's size
        raise DataError(
            f"{first_path} is {first_size[0]}x{first_size[1]} but its COLMAP camera "
            f"{found[chosen[0]].camera_id} is {w}x{h}; the images must be the ones COLMAP saw."
        )
    out_size = downscaled_size((w, h), downscale)
    sx, sy = out_size[0] / w, out_size[1] / h
    # images_N/ copies of every image found (whatever the split, so all splits read alike)
    prescaled = prescaled_images(
        images_dir, downscale,
        [(on_disk_of[im.image_id], (cameras[im.camera_id].width, cameras[im.camera_id].height))
         for im in found], notes)
    n = len(chosen)
    images = (np.empty((n, out_size[1], out_size[0], 4), dtype=np.uint8) if decode
              else placeholder_images(n, out_size[1], out_size[0]))
    intrinsics = np.empty((n, 4), dtype=np.float64)
    distortion = np.empty((n, 6), dtype=np.float64)
    paths: list[Path] = []  # the files read
    originals: list[Path] = []
    transparent: list[Path] = []
    for k, i in enumerate(chosen):
        im = found[i]
        path = on_disk_of[im.image_id]
        cam = cameras[im.camera_id]
        source = path if prescaled is None else prescaled[i]
        if prescaled is None:
            img = read_image(path, i, model_file) if decode else HeaderOnly(
                image_size(path, i, model_file))
            size = img.size
        else:  # the original's size is checked as always; the copy's was checked
            size = image_size(path, i, model_file)
            img = read_image(source, i, model_file) if decode else None
        if size != (cam.width, cam.height):
            raise DataError(
                f"{path} is {size[0]}x{size[1]} but its COLMAP camera {im.camera_id} "
                f"is {cam.width}x{cam.height}; the images must be the ones COLMAP saw."
            )
        if size != (w, h):
            raise DataError(
                f"{model_dir}: images have mixed sizes: {originals[0] if originals else path} "
                f"is {w}x{h} but {path} is {size[0]}x{size[1]}; all images of a split must "
                "share one size."
            )
        if decode:
            if prescaled is None and downscale > 1:
                img = img.resize(out_size, Image.BOX)
            images[k] = np.asarray(img)  # [H, W, 4]
            if fully_transparent(images[k]):
                transparent.append(source)
        _, (fx, fy, cx, cy), dist = cams[im.camera_id]
        intrinsics[k] = (fx * sx, fy * sy, cx * sx, cy * sy)
        distortion[k] = dist
        paths.append(source)
        originals.append(path)

    notes += transparency_notes(transparent, n if decode else 0, split)
    return capture_scene(images, c2w_all[chosen], intrinsics, distortion, camera_model, paths,
                         split, out_size, DEFAULT_SCALE, DEFAULT_OFFSET, aabb_scale, "colmap",
                         notes)


@dataclass
class _ModelImage:
    """What the loader uses of a registered image of a pycolmap Reconstruction."""

    image_id: int
    name: str
    camera_id: int
    cam_from_world: np.ndarray  # [3, 4] float64, world -> OpenCV camera


@dataclass
class _ModelCamera:
    """What the loader uses of a camera of a pycolmap Reconstruction."""

    model: str
    width: int
    height: int
    params: list[float]


def _read_model(model_dir: Path, model_file: Path
                ) -> tuple[list[_ModelImage], dict[int, _ModelCamera], np.ndarray,
                           tuple[np.ndarray, np.ndarray]]:
    """The registered images (with a pose), the cameras they use, the sparse points [P, 3]
    and their observations (image ids and point rows, one pair per track element) of the model
    in ``model_dir``, as plain Python values.

    Everything the loader asks of pycolmap happens here, behind one boundary: its C++ checks
    surface as ValueError, IndexError, RuntimeError, MemoryError or UnicodeDecodeError (a name
    that is not UTF-8), also from a model that reads but is inconsistent (an image whose frame
    is missing fails in ``reg_image_ids``), and each becomes a DataError naming the model."""
    pycolmap = _import_pycolmap()
    check_binary_model(model_dir, pycolmap)
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
        registered = []
        for image_id in rec.reg_image_ids():
            image = rec.images[image_id]
            if not getattr(image, "has_pose", True):  # pycolmap >= 3.12; older: all posed
                continue
            pose = image.cam_from_world  # a method in pycolmap >= 3.12, a property before
            pose = pose() if callable(pose) else pose
            registered.append(_ModelImage(int(image_id), image.name, int(image.camera_id),
                                          np.asarray(pose.matrix(), dtype=np.float64)))
        cameras = {}
        for camera_id in sorted({im.camera_id for im in registered}):
            if camera_id not in rec.cameras:
                raise DataError(f"{model_file}: an image uses camera {camera_id}, which the "
                                "model does not define; the model is damaged.")
            cam = rec.cameras[camera_id]
            cameras[camera_id] = _ModelCamera(cam.model.name, int(cam.width), int(cam.height),
                                              [float(v) for v in cam.params])
        points = np.empty((len(rec.points3D), 3), dtype=np.float64)
        seen_by: list[int] = []
        rows: list[int] = []
        for row, point in enumerate(rec.points3D.values()):
            points[row] = point.xyz
            ids = [el.image_id for el in point.track.elements]
            seen_by += ids
            rows += [row] * len(ids)
    except DataError:
        raise
    except UnicodeDecodeError as e:  # pybind11 decodes the names as UTF-8
        raise DataError(f"{model_file}: an image name is not UTF-8 text ({e}); the model is "
                        "damaged or was written with another encoding.") from None
    except Exception as e:  # noqa: BLE001 - pycolmap's C++ checks surface as many types
        raise DataError(f"cannot read the COLMAP model in {model_dir}: "
                        f"{type(e).__name__}: {str(e)[:300]}. Re-export it from COLMAP "
                        "(colmap model_converter) if the files are damaged.") from None
    observations = (np.asarray(seen_by, dtype=np.int64), np.asarray(rows, dtype=np.int64))
    return registered, cameras, points, observations


def _camera(cam: _ModelCamera, camera_id: int, model_dir: Path) -> tuple[str, tuple, tuple]:
    """(camera model, (fx, fy, cx, cy), (k1, k2, k3, k4, p1, p2)) of a COLMAP camera."""
    name = cam.model
    if name not in _MODELS:
        raise DataError(
            f"{model_dir}: camera {camera_id} uses COLMAP camera model {name}, which is not "
            f"supported; supported models: {', '.join(_MODELS)}. Re-run COLMAP with one of "
            "them or undistort the images (colmap image_undistorter)."
        )
    kind, convert = _MODELS[name]
    params = cam.params
    try:
        intr, dist = convert(params)
    except IndexError:
        raise DataError(f"{model_dir}: camera {camera_id} ({name}) has {len(params)} parameters, "
                        "fewer than its model has; the model is damaged.") from None
    intr, dist = tuple(float(v) for v in intr), tuple(float(v) for v in dist)
    fx, fy, cx, cy = intr
    ok = all(finite_number(v) is not None for v in intr + dist) and fx > 0 and fy > 0
    if not ok:
        raise DataError(
            f"{model_dir}: camera {camera_id} ({name}) has parameters {params}; its focal "
            "lengths must be > 0 and every parameter a finite number. The model is damaged."
        )
    if not (0 < cam.width <= _MAX_SIDE and 0 < cam.height <= _MAX_SIDE):
        raise DataError(f"{model_dir}: camera {camera_id} is {cam.width}x{cam.height} pixels; "
                        f"expected a size from 1 to {_MAX_SIDE} per side. The model is damaged.")
    return kind, intr, dist


# The largest image side a camera may claim (JPEG's and many decoders' limit).
_MAX_SIDE = 65535


def _c2w_opengl(image: _ModelImage, model_file: Path) -> np.ndarray:
    """4x4 OpenGL camera-to-world pose (COLMAP world units) of a registered image; a pose
    that is not finite (a damaged quaternion) is a DataError naming the image."""
    m = image.cam_from_world  # [3, 4] world->camera
    rot, t = m[:, :3], m[:, 3]
    out = np.eye(4)
    out[:3, :3] = rot.T @ _CV_TO_GL
    out[:3, 3] = -rot.T @ t
    if not (np.isfinite(out).all() and np.abs(out).max() <= FLOAT32_MAX):
        raise DataError(f"{model_file}: image {image.image_id} has a pose that is not finite "
                        f"(quaternion and translation {m.round(6).tolist()}); the model is "
                        "damaged.")
    problem = rotation_problem(out)
    if problem:
        raise DataError(f"{model_file}: the pose of image {image.image_id} {problem}; "
                        f"{ROTATION_HINT}.")
    return orthonormalised(out)  # a quaternion's rotation: only rounding is corrected


# ----------------------------------------------------------------------- binary model checks
# pycolmap (COLMAP's C++ reader) trusts the counts in a binary model: a damaged header claiming
# 2^60 points makes it reserve that much memory or read for minutes past the end of the file,
# and an image name without its terminating NUL at the end of images.bin makes it loop. So the
# files' structure is walked here first (offsets only: a few ms for a typical model), following
# src/colmap/scene/reconstruction_io_binary.cc.


class _Cursor:
    """Reads little-endian fields of a COLMAP binary file, failing with a DataError that names
    the file, the field and the byte offset when the file ends before the field does."""

    def __init__(self, buf, path: Path):
        self.buf, self.path, self.pos = buf, path, 0

    def take(self, n: int, what: str) -> int:
        start = self.pos
        if n > len(self.buf) - start:
            raise DataError(f"{self.path}: damaged COLMAP binary file: {what} at byte {start} "
                            f"needs {n} bytes but the file ends at byte {len(self.buf)} "
                            "(truncated?). Re-export the model from COLMAP (colmap "
                            "model_converter) or use its .txt files.")
        self.pos += n
        return start

    def int(self, fmt: str, what: str) -> int:
        return struct.unpack_from(fmt, self.buf, self.take(struct.calcsize(fmt), what))[0]

    def fits(self, count: int, size: int, what: str) -> None:
        """``count`` entries of at least ``size`` bytes fit in what is left of the file."""
        left = len(self.buf) - self.pos
        if count > left // size:
            raise DataError(f"{self.path}: damaged COLMAP binary file: {what} before byte "
                            f"{self.pos} claims {count} entries of at least {size} bytes, but "
                            f"only {left} bytes follow. Re-export the model from COLMAP (colmap "
                            "model_converter) or use its .txt files.")

    def skip(self, count: int, size: int, what: str) -> None:
        self.fits(count, size, what)
        self.pos += count * size

    def name(self, what: str) -> None:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise DataError(f"{self.path}: damaged COLMAP binary file: {what} at byte "
                            f"{self.pos} has no terminating NUL before the end of the file.")
        self.pos = end + 1


# Parameters per COLMAP camera model id (src/colmap/sensor/models.h); newer ids are asked of
# pycolmap.
_NUM_PARAMS = {0: 3, 1: 4, 2: 4, 3: 5, 4: 8, 5: 8, 6: 12, 7: 5, 8: 4, 9: 5, 10: 12, 11: 16,
               12: 4, 13: 5, 14: 3, 15: 4, 16: 6, 17: 2}


@functools.cache
def _num_params(pycolmap, model_id: int) -> int | None:
    """Parameters of COLMAP camera model ``model_id``; None for an id COLMAP does not define."""
    if model_id in _NUM_PARAMS:
        return _NUM_PARAMS[model_id]
    try:
        model = pycolmap.CameraModelId(model_id)
        return len(pycolmap.Camera.create_from_model_id(1, model, 1.0, 1, 1).params)
    except Exception:  # noqa: BLE001 - pycolmap's failures all mean "not a model id"
        return None


def _walk_cameras(c: _Cursor, pycolmap) -> None:
    count = c.int("<Q", "the number of cameras")
    c.fits(count, 24, "the number of cameras")  # each at least id, model, width, height
    for k in range(count):
        c.take(4, f"camera {k}'s id")
        model_id = c.int("<i", f"camera {k}'s model id")
        n = _num_params(pycolmap, model_id)
        if n is None:
            raise DataError(f"{c.path}: camera {k} has camera model id {model_id}, which COLMAP "
                            "does not define; the file is damaged.")
        c.take(16, f"camera {k}'s size")
        c.skip(n, 8, f"camera {k}'s parameters")


def _walk_images(c: _Cursor, pycolmap) -> None:
    count = c.int("<Q", "the number of images")
    c.fits(count, 73, "the number of images")  # each at least 64 + 1 + 8 bytes
    for k in range(count):
        c.take(64, f"image {k}'s id, pose and camera id")
        c.name(f"image {k}'s name")
        n = c.int("<Q", f"image {k}'s number of 2D points")
        c.skip(n, 24, f"image {k}'s number of 2D points")


def _walk_points(c: _Cursor, pycolmap) -> None:
    count = c.int("<Q", "the number of 3D points")
    c.fits(count, 51, "the number of 3D points")  # each at least 43 + 8 bytes
    for k in range(count):
        c.take(43, f"3D point {k}")
        n = c.int("<Q", f"3D point {k}'s track length")
        c.skip(n, 8, f"3D point {k}'s track length")


def _walk_rigs(c: _Cursor, pycolmap) -> None:
    count = c.int("<Q", "the number of rigs")
    c.fits(count, 8, "the number of rigs")
    for k in range(count):
        c.take(4, f"rig {k}'s id")
        n = c.int("<I", f"rig {k}'s number of sensors")
        if n > 0:
            c.take(8, f"rig {k}'s reference sensor")
        c.fits(max(n - 1, 0), 9, f"rig {k}'s number of sensors")  # each at least 9 bytes
        for j in range(max(n - 1, 0)):
            c.take(8, f"rig {k}'s sensor {j}")
            if c.int("<B", f"rig {k}'s sensor {j} pose flag"):
                c.take(56, f"rig {k}'s sensor {j} pose")


def _walk_frames(c: _Cursor, pycolmap) -> None:
    count = c.int("<Q", "the number of frames")
    c.fits(count, 68, "the number of frames")  # each at least 4 + 4 + 56 + 4 bytes
    for k in range(count):
        c.take(64, f"frame {k}'s ids and pose")
        n = c.int("<I", f"frame {k}'s number of data ids")
        c.skip(n, 16, f"frame {k}'s number of data ids")


_BINARY_FILES = {
    "rigs.bin": _walk_rigs,
    "cameras.bin": _walk_cameras,
    "frames.bin": _walk_frames,
    "images.bin": _walk_images,
    "points3D.bin": _walk_points,
}


def check_binary_model(model_dir: Path, pycolmap) -> None:
    """Walk the binary files of the model in ``model_dir`` (those present) and raise a
    DataError naming the file, the field and the offset where a count or a string does not
    fit in the file. Text models are left to pycolmap, which reads them line by line."""
    for name, walk in _BINARY_FILES.items():
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            with open(path, "rb") as f:
                if path.stat().st_size == 0:
                    raise DataError(f"{path}: the file is empty; re-export the model.")
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                    walk(_Cursor(buf, path), pycolmap)
        except OSError as e:
            raise DataError(f"{path}: cannot read it ({e.strerror or e}).") from None
