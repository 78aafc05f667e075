"""Structure from motion through pycolmap: SIFT features, matching, incremental mapping.

- Matching (``--matcher``): "sequential" pairs each image with its neighbours in name order
  (COLMAP's default overlap of 10, plus the quadratic overlap 2^k that reaches across longer
  gaps) and suits a video's frames; "exhaustive" pairs every two images and suits a small set
  of photos in any order. "auto" is sequential for a video and exhaustive for up to
  :data:`EXHAUSTIVE_MAX_IMAGES` photos (sequential above, which assumes the photos' names follow
  the capture). COLMAP's loop detection needs a vocabulary tree, which pycolmap downloads on
  first use; nothing is downloaded here, so it stays off (the quadratic overlap closes short
  loops).
- Camera model (``--camera-model``): "auto" is OPENCV (fx, fy, cx, cy, k1, k2, p1, p2) for a
  video (hundreds of views pin its eight parameters down) and SIMPLE_RADIAL (f, cx, cy, k) for
  photos: fewer parameters for fewer views. Any model :mod:`nerfmine.data.colmap` reads may be
  named. One camera is shared by every frame of a video and by photos that agree on their EXIF
  make, model and focal length (or have none); photos that differ get COLMAP's AUTO camera
  mode (one camera per size and EXIF focal length). Sharing matters: on 17 fox photos at
  240 px a camera per photo put the centres 2.2% of the cameras' spread from the known ones,
  one shared camera 0.9%.
- Mapping: COLMAP's incremental mapper; of the models it builds (one per connected group of
  images), the largest is written to ``sparse/0``. The random seed is fixed, so a rerun on the
  same images gives the same model up to thread scheduling.

pycolmap is an optional extra (``pip install 'nerfmine[process]'``); it is imported at first use.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from nerfmine.errors import ConfigError, DataError

MATCHERS = ("auto", "sequential", "exhaustive")
# --matcher auto matches photo sets up to this size exhaustively (n (n - 1) / 2 pairs: 4,950
# for 100 photos, a few minutes on a laptop CPU at 1,000 px).
EXHAUSTIVE_MAX_IMAGES = 100
CAMERA_MODELS = ("auto", "SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV",
                 "OPENCV_FISHEYE", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE")
# Fewest registered images that make a scene (a NeRF from fewer views is not worth training).
MIN_REGISTERED = 3
SEED = 0
INSTALL_HINT = "pip install 'nerfmine[process]'"
HINTS = ("try: photos or frames with more overlap (every part of the subject seen from three "
         "or more views, neighbouring views a few degrees apart), sharper frames (move the "
         "camera slowly; a video gives more choice with more --frames), another --matcher "
         "(exhaustive pairs every two images) or another --camera-model (OPENCV or "
         "SIMPLE_RADIAL)")

# stage(name, total) -> a context whose value is update(done, total)
Stage = Callable[[str, "int | None"], contextlib.AbstractContextManager]


def import_pycolmap():
    try:
        import pycolmap
    except ImportError as e:
        raise DataError("structure from motion needs pycolmap, which is not installed: "
                        f"{INSTALL_HINT} (or pip install pycolmap).") from e
    return pycolmap


def choose_matcher(matcher: str, is_video: bool, n_images: int) -> str:
    if matcher not in MATCHERS:
        raise ConfigError(f"--matcher must be one of {', '.join(MATCHERS)}, got '{matcher}'.")
    if matcher != "auto":
        return matcher
    return "sequential" if is_video or n_images > EXHAUSTIVE_MAX_IMAGES else "exhaustive"


def choose_camera_model(camera_model: str, is_video: bool) -> str:
    name = camera_model.upper() if camera_model.lower() != "auto" else "auto"
    if name not in CAMERA_MODELS:
        raise ConfigError(f"--camera-model must be one of {', '.join(CAMERA_MODELS)}, got "
                          f"'{camera_model}'.")
    if name != "auto":
        return name
    return "OPENCV" if is_video else "SIMPLE_RADIAL"


@dataclass(frozen=True)
class SfmSettings:
    """What :func:`run_sfm` did, after "auto" was resolved."""

    matcher: str
    camera_model: str
    single_camera: bool
    models: list[int]  # registered images of each model the mapper built, largest first


@contextlib.contextmanager
def _colmap_log(pycolmap, verbose: bool) -> Iterator[None]:
    """COLMAP's INFO lines (several per image) only with ``verbose``."""
    before = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = before if verbose else 2  # 2: errors only
    try:
        yield
    finally:
        pycolmap.logging.minloglevel = before


def run_sfm(images_dir: Path, names: list[str], work_dir: Path, is_video: bool,
            single_camera: bool, matcher: str, camera_model: str, stage: Stage,
            verbose: bool = False) -> SfmSettings:
    """Reconstruct the images ``names`` of ``images_dir``: COLMAP's database goes to
    ``work_dir/database.db`` and the largest model to ``work_dir/sparse/0``; ``single_camera``
    makes every image share one camera. Raises DataError
    with what to try when fewer than :data:`MIN_REGISTERED` images register."""
    pycolmap = import_pycolmap()
    matcher = choose_matcher(matcher, is_video, len(names))
    camera_model = choose_camera_model(camera_model, is_video)
    single = single_camera
    database = work_dir / "database.db"
    pycolmap.set_random_seed(SEED)
    with _colmap_log(pycolmap, verbose):
        with stage("features", len(names)) as update:
            reader = pycolmap.ImageReaderOptions()
            reader.camera_model = camera_model
            mode = pycolmap.CameraMode.SINGLE if single else pycolmap.CameraMode.AUTO
            _call(pycolmap.extract_features, "feature extraction", images_dir, database,
                  images_dir, image_names=names, camera_mode=mode, reader_options=reader)
            update(len(names), len(names))
        with stage(f"matching ({matcher})", None):
            match = (pycolmap.match_sequential if matcher == "sequential"
                     else pycolmap.match_exhaustive)
            _call(match, f"{matcher} matching", images_dir, database)
        with stage("mapping", len(names)) as update:
            options = pycolmap.IncrementalPipelineOptions()
            options.min_model_size = min(options.min_model_size, MIN_REGISTERED)
            options.random_seed = SEED
            mapped = work_dir / "mapper"
            mapped.mkdir()
            registered = [0]

            def next_image() -> None:
                registered[0] += 1
                update(min(registered[0], len(names)), len(names))

            models = _call(pycolmap.incremental_mapping, "incremental mapping", images_dir,
                           database, images_dir, mapped, options,
                           next_image_callback=next_image)
    ranked = sorted(models.values(), key=lambda r: r.num_reg_images(), reverse=True)
    sizes = [r.num_reg_images() for r in ranked]
    if not ranked or sizes[0] < MIN_REGISTERED:
        got = "none" if not ranked else f"only {sizes[0]}"
        raise DataError(f"structure from motion registered {got} of the {len(names)} images in "
                        f"{images_dir} (at least {MIN_REGISTERED} are needed; matcher "
                        f"{matcher}, camera model {camera_model}); {HINTS}.")
    sparse = work_dir / "sparse" / "0"
    sparse.mkdir(parents=True)
    ranked[0].write(str(sparse))
    shutil.rmtree(mapped)
    return SfmSettings(matcher, camera_model, single, sizes)


def _call(function, what: str, images_dir: Path, *args, **kwargs):
    """A pycolmap call whose C++ failure becomes a DataError naming the stage and folder."""
    try:
        return function(*[str(a) if isinstance(a, Path) else a for a in args], **kwargs)
    except (RuntimeError, ValueError) as e:
        raise DataError(f"{what} failed on the images in {images_dir}: {e}") from None
