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
  ``aabb_scale`` is the smallest power of two whose box holds 99% of the sparse points (at most
  16; 1 for a model without points), so that a capture's background is modelled. Notes record
  the centre, radius and box used.
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
  index % holdout_every == 0), "train" the rest, "all" every image. ``downscale`` box-filters the
  images and scales the intrinsics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from nerfmine.data.capture import (
    DEFAULT_OFFSET,
    DEFAULT_SCALE,
    aabb_scale_for_extent,
    capture_scene,
    check_capture_args,
    handle_missing,
    holdout_indices,
    pose_centre_and_radius,
)
from nerfmine.data.files import (
    HeaderOnly,
    downscaled_size,
    image_size,
    placeholder_images,
    read_image,
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
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
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
    pycolmap = _import_pycolmap()
    try:
        rec = pycolmap.Reconstruction(str(model_dir))
    except Exception as e:  # pycolmap raises ValueError/RuntimeError with its own text
        raise DataError(f"cannot read the COLMAP model in {model_dir}: {e}") from e
    # the file named in per-image error messages
    model_file = next(
        (model_dir / n for n in ("images.bin", "images.txt") if (model_dir / n).is_file()),
        model_dir / "images.bin",
    )
    notes: list[str] = []

    registered = []
    for image_id in rec.reg_image_ids():
        image = rec.images[image_id]
        if getattr(image, "has_pose", True):  # pycolmap >= 3.12; older: registered = posed
            registered.append(image)
    if not registered:
        raise DataError(f"the COLMAP model in {model_dir} has no registered images.")
    registered.sort(key=lambda im: im.name)
    reg_names = {im.name for im in registered}

    # image files on disk without a pose
    on_disk = sorted(
        p.relative_to(images_dir).as_posix()
        for p in images_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in _IMAGE_EXTS
    )
    unposed = [n for n in on_disk if n not in reg_names]
    if unposed:
        notes.append(
            f"{len(unposed)} of {len(on_disk)} image files in {images_dir} have no pose in the "
            f"COLMAP model (not registered) and are not used (first: {', '.join(unposed[:3])}"
            f"{' ...' if len(unposed) > 3 else ''})."
        )

    found = [im for im in registered if (images_dir / im.name).is_file()]
    missing = [im.name for im in registered if not (images_dir / im.name).is_file()]
    handle_missing(model_dir, "registered images",
                   f"registered images do not exist in {images_dir}", len(registered), missing,
                   len(found), skip_missing, notes,
                   f"image names are resolved relative to {images_dir}")

    # cameras of every image found (whatever the split), so all splits agree on the model
    cams: dict[int, tuple[str, tuple, tuple]] = {}
    for im in found:
        if im.camera_id not in cams:
            cams[im.camera_id] = _camera(rec.cameras[im.camera_id], im.camera_id, model_dir)
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
    c2w_all = np.stack([_c2w_opengl(im) for im in found])  # [M, 4, 4] float64
    centres = c2w_all[:, :3, 3]
    centre, radius = pose_centre_and_radius(centres)
    c2w_all[:, :3, 3] = (centres - centre) / radius
    notes.append(
        "COLMAP world normalised: centred at the mean camera position "
        f"({centre[0]:.4g}, {centre[1]:.4g}, {centre[2]:.4g}) and divided by {radius:.4g} so the "
        "cameras lie within radius 1; scale 0.33, offset 0.5 (instant-ngp's defaults)."
    )
    aabb_scale = _aabb_scale_from_points(rec, centre, radius, notes)

    chosen = holdout_indices(len(found), split, holdout_every, model_dir, "registered image")

    first = rec.cameras[found[chosen[0]].camera_id]
    w, h = int(first.width), int(first.height)
    out_size = downscaled_size((w, h), downscale)
    sx, sy = out_size[0] / w, out_size[1] / h
    n = len(chosen)
    images = (np.empty((n, out_size[1], out_size[0], 4), dtype=np.uint8) if decode
              else placeholder_images(n, out_size[1], out_size[0]))
    intrinsics = np.empty((n, 4), dtype=np.float64)
    distortion = np.empty((n, 6), dtype=np.float64)
    paths: list[Path] = []
    for k, i in enumerate(chosen):
        im = found[i]
        path = images_dir / im.name
        cam = rec.cameras[im.camera_id]
        img = read_image(path, i, model_file) if decode else HeaderOnly(
            image_size(path, i, model_file))
        if img.size != (int(cam.width), int(cam.height)):
            raise DataError(
                f"{path} is {img.size[0]}x{img.size[1]} but its COLMAP camera {im.camera_id} "
                f"is {cam.width}x{cam.height}; the images must be the ones COLMAP saw."
            )
        if img.size != (w, h):
            raise DataError(
                f"{model_dir}: images have mixed sizes: {paths[0] if paths else path} is "
                f"{w}x{h} but {path} is {img.size[0]}x{img.size[1]}; all images of a split "
                "must share one size."
            )
        if decode:
            if downscale > 1:
                img = img.resize(out_size, Image.BOX)
            images[k] = np.asarray(img)  # [H, W, 4]
        _, (fx, fy, cx, cy), dist = cams[im.camera_id]
        intrinsics[k] = (fx * sx, fy * sy, cx * sx, cy * sy)
        distortion[k] = dist
        paths.append(path)

    return capture_scene(images, c2w_all[chosen], intrinsics, distortion, camera_model, paths,
                         split, out_size, DEFAULT_SCALE, DEFAULT_OFFSET, aabb_scale, "colmap",
                         notes)


# The share of sparse points the modelled box must hold: a few stray points far out (bad
# triangulations) should not grow the box.
POINTS_QUANTILE = 0.99


def _aabb_scale_from_points(rec, centre, radius: float, notes: list[str]) -> float:
    """aabb_scale from the sparse points in the normalised world: the box holds
    :data:`POINTS_QUANTILE` of them (and the cameras), at most 16; 1 without points."""
    points = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        return 1.0
    extent = np.abs((points - centre) / radius).max(axis=1)  # [P], per axis from the centre
    reach = float(np.quantile(extent, POINTS_QUANTILE))
    aabb_scale = aabb_scale_for_extent(max(reach, 1.0))
    notes.append(f"aabb_scale {aabb_scale:g} from the {len(points)} sparse points "
                 f"({POINTS_QUANTILE:.0%} of them lie within {reach:.3g} of the cameras' centre "
                 "per axis); set data.aabb_scale to choose another.")
    return aabb_scale


def _camera(cam, camera_id: int, model_dir: Path) -> tuple[str, tuple, tuple]:
    """(camera model, (fx, fy, cx, cy), (k1, k2, k3, k4, p1, p2)) of a COLMAP camera."""
    name = cam.model.name
    if name not in _MODELS:
        raise DataError(
            f"{model_dir}: camera {camera_id} uses COLMAP camera model {name}, which is not "
            f"supported; supported models: {', '.join(_MODELS)}. Re-run COLMAP with one of "
            "them or undistort the images (colmap image_undistorter)."
        )
    kind, convert = _MODELS[name]
    params = [float(v) for v in cam.params]
    intr, dist = convert(params)
    return kind, tuple(float(v) for v in intr), tuple(float(v) for v in dist)


def _c2w_opengl(image) -> np.ndarray:
    """4x4 OpenGL camera-to-world pose (COLMAP world units) of a registered pycolmap image."""
    pose = image.cam_from_world  # a method in pycolmap >= 3.12, a property before
    pose = pose() if callable(pose) else pose
    m = np.asarray(pose.matrix(), dtype=np.float64)  # [3, 4] world->camera
    rot, t = m[:, :3], m[:, 3]
    out = np.eye(4)
    out[:3, :3] = rot.T @ _CV_TO_GL
    out[:3, 3] = -rot.T @ t
    return out
