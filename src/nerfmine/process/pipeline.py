"""``nerfmine process``: a video or a folder of photos -> a scene ``nerfmine train`` reads.

Stages: images (video frames or photos) -> pre-downscaled copies -> structure from motion ->
transforms.json -> cameras.png -> process.json. The scene folder holds ``images/``,
``images_2|4|8/``, ``sparse/0/`` (the COLMAP model), ``database.db`` (COLMAP's features and
matches), ``transforms.json``, ``cameras.png`` and ``process.json``.

Nothing half-written is ever a scene: a full run works in a hidden folder beside the scene
folder and renames it into place at the end (the old folder, with ``overwrite``, is removed only
then); a failure removes the hidden folder. ``skip_sfm`` rereads the scene folder's COLMAP model
and rewrites transforms.json, cameras.png and process.json, each atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nerfmine.errors import ConfigError, DataError
from nerfmine.process import frames as frames_
from nerfmine.process.convert import read_model, transforms_dict
from nerfmine.process.preview import draw_cameras
from nerfmine.process.sfm import HINTS, MIN_REGISTERED, SfmSettings, run_sfm
from nerfmine.run_folder import atomic_write_text

# The target: about 150 views cover an object-centred capture (instant-ngp's advice is
# 50-150 images) and keep COLMAP's sequential matching to minutes on a CPU.
DEFAULT_FRAMES = 150
DOWNSCALE_FACTORS = (2, 4, 8)
REPORT = "process.json"
PREVIEW = "cameras.png"
TRANSFORMS = "transforms.json"
# Below this share of registered images the report warns (the scene is still written).
LOW_REGISTRATION = 0.5


@dataclass(frozen=True)
class ProcessOptions:
    """How :func:`process` works; the CLI flags of the same names."""

    frames: int = DEFAULT_FRAMES  # video: frames to keep, one per equal time window
    max_size: int | None = None  # long side of the stored images (None: as they are)
    matcher: str = "auto"  # auto | sequential | exhaustive (see nerfmine.process.sfm)
    camera_model: str = "auto"  # auto or a COLMAP model name (see nerfmine.process.sfm)
    downscaled: tuple[int, ...] = DOWNSCALE_FACTORS  # images_N copies to write
    overwrite: bool = False  # replace a non-empty scene folder
    skip_sfm: bool = False  # reuse the scene folder's COLMAP model
    verbose: bool = False  # COLMAP's own log lines


@dataclass
class ProcessReport:
    """What :func:`process` did; saved as process.json."""

    scene_dir: str
    input: str | None
    kind: str  # "video" | "photos" | "existing model"
    images_total: int
    images_registered: int
    unregistered: list[str]
    mean_reprojection_error_px: float | None
    points: int
    aabb_scale: float
    camera_model: str | None
    matcher: str | None
    models: list[int] | None  # registered images per model COLMAP built (largest kept)
    single_camera: bool | None  # one camera shared by every image
    downscaled: list[str]
    stage_seconds: dict[str, float]
    images: list[dict] = field(default_factory=list)  # name, source, sharpness, registered
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """The lines the CLI prints."""
        lines = [f"scene {self.scene_dir}: {self.images_registered} of {self.images_total} "
                 f"images registered"]
        if self.unregistered:
            lines.append(f"  not registered: {', '.join(self.unregistered[:10])}"
                         f"{' ...' if len(self.unregistered) > 10 else ''}")
        err = self.mean_reprojection_error_px
        lines.append(f"  {self.points} sparse points, mean reprojection error "
                     f"{'-' if err is None else f'{err:.3f} px'}, aabb_scale "
                     f"{self.aabb_scale:g}" + (f", camera model {self.camera_model}, matcher "
                                               f"{self.matcher}" if self.matcher else ""))
        lines.append("  time: " + ", ".join(f"{k} {v:.1f} s"
                                            for k, v in self.stage_seconds.items()))
        lines += [f"  warning: {w}" for w in self.warnings]
        lines.append(f"  check the cameras before training: {self.outputs.get('preview')}")
        lines.append(f"  train with: nerfmine train {self.scene_dir}")
        return "\n".join(lines)


class Reporter:
    """Progress of the stages; this one shows nothing (the CLI's draws rich bars).
    ``stage(name, total)`` is a context whose value is ``update(done, total)``."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None) -> Iterator:
        yield lambda done, total: None


class _Timed:
    """Wraps a Reporter and records each stage's wall time (seconds)."""

    def __init__(self, reporter: Reporter):
        self.reporter = reporter
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str, total: int | None) -> Iterator:
        start = time.perf_counter()
        with self.reporter.stage(name, total) as update:
            yield update
        key = name.split(" (")[0]
        self.seconds[key] = round(self.seconds.get(key, 0.0) + time.perf_counter() - start, 3)


def input_kind(path: Path) -> str:
    """"photos" for a folder, "video" for any other file; DataError for what cannot be."""
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a video file or a folder of photos.")
    if path.is_dir():
        return "photos"
    if path.suffix.lower() in frames_.IMAGE_EXTS:
        raise DataError(f"{path} is a single image; structure from motion needs several "
                        "overlapping views: pass the folder that holds the photos (20 or more "
                        "is a good start).")
    return "video"


def check_scene_dir(scene_dir: Path, overwrite: bool) -> None:
    if scene_dir.exists() and not scene_dir.is_dir():
        raise ConfigError(f"{scene_dir} is a file; choose a folder for the scene with -o.")
    if scene_dir.is_dir() and any(scene_dir.iterdir()) and not overwrite:
        raise ConfigError(f"{scene_dir} exists and is not empty; pass --overwrite to replace "
                          "it, --skip-sfm to reuse its COLMAP model, or choose another -o.")


def process(input_path: Path | None, scene_dir: Path, options: ProcessOptions = ProcessOptions(),
            reporter: Reporter | None = None) -> ProcessReport:
    """Make the scene ``scene_dir`` from ``input_path`` (a video or a folder of photos); with
    ``options.skip_sfm`` reuse ``scene_dir``'s COLMAP model instead (``input_path`` unused).
    Raises DataError / ConfigError with what to do; writes nothing a loader would take for a
    scene unless it succeeds."""
    scene_dir = Path(scene_dir).expanduser()
    timed = _Timed(reporter or Reporter())
    if options.skip_sfm:
        return _reuse(scene_dir, timed)
    if input_path is None:
        raise ConfigError("pass the video or the folder of photos to process (or --skip-sfm to "
                          "reuse the scene folder's COLMAP model).")
    input_path = Path(input_path).expanduser()
    kind = input_kind(input_path)
    if options.frames < MIN_REGISTERED:
        raise ConfigError(f"--frames must be at least {MIN_REGISTERED}, got {options.frames}.")
    if options.max_size is not None and options.max_size < 32:
        raise ConfigError(f"--max-size must be at least 32 pixels, got {options.max_size}.")
    check_scene_dir(scene_dir, options.overwrite)
    if kind == "photos":
        n = len(frames_.image_files(input_path))
        if n < MIN_REGISTERED:
            found = "no image files" if n == 0 else f"only {n} image file{'s' * (n > 1)}"
            raise DataError(f"{input_path} holds {found} ({', '.join(sorted(frames_.IMAGE_EXTS))}"
                            f"); structure from motion needs at least {MIN_REGISTERED} "
                            "overlapping photos (20 or more is a good start).")
    scene_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{scene_dir.name}.process-", dir=scene_dir.parent))
    try:
        _usual_mode(work, 0o777)  # mkdtemp's folder is private
        report = _full_run(input_path, kind, work, scene_dir, options, timed)
        _publish(work, scene_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report


def _full_run(input_path: Path, kind: str, work: Path, scene_dir: Path,
              options: ProcessOptions, timed: _Timed) -> ProcessReport:
    images_dir = work / "images"
    images_dir.mkdir()
    if kind == "video":
        with timed("frames", None) as update:
            stored = frames_.select_video_frames(input_path, images_dir, options.frames,
                                                 options.max_size, update)
        if len(stored) < MIN_REGISTERED:
            raise DataError(f"{input_path}: the video has only {len(stored)} frames; structure "
                            f"from motion needs at least {MIN_REGISTERED}.")
    else:
        with timed("images", None) as update:
            stored = frames_.import_photos(input_path, images_dir, options.max_size, update)
    names = [s.name for s in stored]
    downscaled: list[str] = []
    if options.downscaled:
        with timed("downscaled copies", len(names)) as update:
            factors = frames_.write_downscaled(images_dir, names, tuple(options.downscaled),
                                               update)
        downscaled = [f"images_{f}" for f in factors]
    single = kind == "video" or len({s.camera for s in stored}) == 1
    settings = run_sfm(images_dir, names, work, kind == "video", single, options.matcher,
                       options.camera_model, timed, options.verbose)
    images = [{"name": s.name, "source": s.source, "sharpness": round(s.sharpness, 4)}
              for s in stored]
    return _describe(work, scene_dir, str(input_path), kind, images, settings, downscaled,
                     timed)


def _reuse(scene_dir: Path, timed: _Timed) -> ProcessReport:
    if not (scene_dir / "sparse" / "0").is_dir() or not (scene_dir / "images").is_dir():
        raise DataError(f"--skip-sfm: {scene_dir} has no COLMAP model to reuse (it needs "
                        "sparse/0/ and images/); run nerfmine process without --skip-sfm.")
    previous = _previous_report(scene_dir)
    images = previous.get("images") or [
        {"name": p.relative_to(scene_dir / "images").as_posix()}
        for p in sorted((scene_dir / "images").rglob("*"))
        if p.is_file() and p.suffix.lower() in frames_.IMAGE_EXTS]
    downscaled = [p.name for p in sorted(scene_dir.glob("images_*")) if p.is_dir()]
    return _describe(scene_dir, scene_dir, previous.get("input"), "existing model", images,
                     None, downscaled, timed)


def _previous_report(scene_dir: Path) -> dict:
    try:
        data = json.loads((scene_dir / REPORT).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(folder: Path, scene_dir: Path, source: str | None, kind: str, images: list[dict],
              settings: SfmSettings | None, downscaled: list[str],
              timed: _Timed) -> ProcessReport:
    """Write transforms.json, cameras.png and process.json into ``folder`` (which becomes
    ``scene_dir``) and return the report."""
    names = [im["name"] for im in images]
    with timed("conversion", None):
        model = read_model(folder, names)
        sharp = {im["name"]: im["sharpness"] for im in images if "sharpness" in im}
        meta = transforms_dict(model.scene, folder, sharp)
        atomic_write_text(folder / TRANSFORMS, json.dumps(meta, indent=2))
    scene = model.scene
    with timed("preview", None):
        draw_cameras(folder / PREVIEW, scene.c2w.double().numpy(),
                     scene.intrinsics.numpy(), scene.width, scene.height, model.points,
                     scene.aabb_scale, scene.scale, scene.offset,
                     f"{scene_dir.name}: {len(scene)} cameras, {len(model.points)} points")
    registered = set(model.registered)
    for im in images:
        im["registered"] = im["name"] in registered
    total = max(len(names), len(model.registered))
    warnings = []
    if len(model.registered) < LOW_REGISTRATION * total:
        warnings.append(f"only {len(model.registered)} of {total} images registered; the scene "
                        f"covers part of the capture. To register more, {HINTS}.")
    error = model.mean_reprojection_error
    report = ProcessReport(
        scene_dir=str(scene_dir), input=source, kind=kind, images_total=total,
        images_registered=len(model.registered), unregistered=model.unregistered,
        mean_reprojection_error_px=None if math.isnan(error) else round(error, 4),
        points=len(model.points), aabb_scale=scene.aabb_scale,
        camera_model=settings.camera_model if settings else None,
        matcher=settings.matcher if settings else None,
        models=settings.models if settings else None,
        single_camera=settings.single_camera if settings else None, downscaled=downscaled,
        stage_seconds=timed.seconds, images=images, warnings=warnings,
        outputs={"images": str(scene_dir / "images"), "sparse": str(scene_dir / "sparse" / "0"),
                 "transforms": str(scene_dir / TRANSFORMS),
                 "preview": str(scene_dir / PREVIEW), "report": str(scene_dir / REPORT)})
    report.stage_seconds = dict(timed.seconds)
    atomic_write_text(folder / REPORT, json.dumps(asdict(report), indent=2))
    for name in (TRANSFORMS, PREVIEW, REPORT):
        _usual_mode(folder / name, 0o666)  # atomic writes make private files
    return report


def _usual_mode(path: Path, mode: int) -> None:
    """Give ``path`` the permissions a new file or folder gets (``mode`` less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _publish(work: Path, scene_dir: Path) -> None:
    """Rename the finished ``work`` folder to ``scene_dir``; an old ``scene_dir`` (allowed by
    ``overwrite``) is moved aside first and removed after."""
    old = None
    if scene_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{scene_dir.name}.old-", dir=scene_dir.parent))
        os.replace(scene_dir, old / "scene")
    try:
        os.replace(work, scene_dir)
    except OSError:
        if old is not None:
            os.replace(old / "scene", scene_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
