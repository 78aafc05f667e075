"""The images of a capture: the sharpest frame of each time window of a video, or a folder of
photographs as they are (EXIF orientation applied), stored in ``images/`` with optional
pre-downscaled copies ``images_2/``, ``images_4/``, ``images_8/``.

Sharpness is the variance of the image's Laplacian (the 4-neighbour kernel ``[0 1 0; 1 -4 1;
0 1 0]``, OpenCV's ``Laplacian`` with ksize 1, on the grey image in 0..255), the measure
instant-ngp's colmap2nerf writes per frame and nerfmine's ``--min-sharpness`` reads. It is a
ranking within one video (same scene, same exposure a moment apart), not an absolute blur scale,
which is what choosing one frame per window needs. Frames are measured on a grey copy
box-shrunk to at most :data:`SHARPNESS_SIZE` pixels on the long side, so a 4K video is measured
as fast as a 1080p one; shrinking divides every frame's value alike and keeps their order for
the motion blur that separates neighbouring frames (blur wider than a few pixels).

Video is read through imageio-ffmpeg (``pip install 'nerfmine[process]'``), which rotates phone
videos upright as ffmpeg does. Windows are equal spans of frame indices (equal time spans for a
constant frame rate), one frame chosen from each, so the capture is covered evenly.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nerfmine.errors import DataError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}
VIDEO_EXTS = {".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mts", ".3gp", ".mpg", ".mpeg"}
# Long side (pixels) of the grey copy a frame's sharpness is measured on (see the module doc).
SHARPNESS_SIZE = 1024
# Stored JPEG quality of video frames (a frame is decoded once, so one encoding loses little).
JPEG_QUALITY = 95
_EXIF_ORIENTATION = 0x0112
INSTALL_HINT = "pip install 'nerfmine[process]'"

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class StoredImage:
    """An image written to ``images/``: its file name, where it came from and its sharpness."""

    name: str
    source: str  # the photo's path, or "VIDEO#frame" for a video frame
    sharpness: float
    camera: str = ""  # EXIF make, model and focal length ("" when the file has none)


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of a grey image [H, W] (interior pixels; 0 for an
    image smaller than 3x3)."""
    g = np.asarray(gray, dtype=np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1]
           - 4.0 * g[1:-1, 1:-1])  # [H-2, W-2]
    return float(lap.astype(np.float64).var())


def sharpness(rgb: np.ndarray) -> float:
    """Sharpness of an RGB(A) uint8 image [H, W, C]: :func:`laplacian_variance` of its grey
    (ITU-R 601 luma, as OpenCV's) box-shrunk to at most :data:`SHARPNESS_SIZE` on the long
    side."""
    rgb = np.asarray(rgb)
    gray = rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    factor = -(-max(gray.shape) // SHARPNESS_SIZE)  # ceil
    if factor > 1:
        h, w = (gray.shape[0] // factor) * factor, (gray.shape[1] // factor) * factor
        gray = gray[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
    return laplacian_variance(gray)


def window_of(index: int, total: int, count: int) -> int:
    """The window (0..count-1) of frame ``index`` of ``total`` split into ``count`` equal
    spans; frames past ``total`` (a container that under-reported) fall in the last one."""
    return min(index * count // total, count - 1)


def fitted_size(size: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """(width, height) with the long side at most ``max_size`` (aspect kept); ``size`` when it
    already fits or ``max_size`` is None."""
    w, h = size
    if max_size is None or max(w, h) <= max_size:
        return w, h
    s = max_size / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _import_ffmpeg():
    try:
        import imageio_ffmpeg
    except ImportError as e:
        raise DataError("reading a video needs imageio-ffmpeg, which is not installed: "
                        f"{INSTALL_HINT} (or pip install imageio imageio-ffmpeg).") from e
    return imageio_ffmpeg


def select_video_frames(video: Path, images_dir: Path, count: int, max_size: int | None,
                        progress: Progress | None = None) -> list[StoredImage]:
    """Write the sharpest frame of each of ``count`` equal windows of ``video`` to
    ``images_dir`` as ``frame_NNNNN.jpg`` (NNNNN: the frame's index in the video), shrunk to
    ``max_size`` on the long side; every frame when the video has ``count`` or fewer.

    One decoding pass holds one frame per window at a time. Raises DataError for a file that
    ffmpeg cannot read or that has no video frames."""
    ffmpeg = _import_ffmpeg()
    hint = ("check that the file plays, or extract its frames yourself and pass their "
            "folder instead")
    try:
        total, _ = ffmpeg.count_frames_and_secs(str(video))
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(f"{video}: ffmpeg cannot read it as a video ({_first_line(e)}); "
                        f"{hint}.") from None
    if total <= 0:
        raise DataError(f"{video}: the file has no video frames; {hint}.")
    count = min(count, total)
    stored: list[StoredImage] = []
    best: tuple[float, int, np.ndarray] | None = None  # (sharpness, frame index, frame)
    window = 0
    try:
        frames = ffmpeg.read_frames(str(video))
        meta = next(frames)
        w, h = meta["size"]
        for i, raw in enumerate(frames):
            if window_of(i, total, count) != window:
                stored.append(_store_frame(best, video, images_dir, max_size))
                best, window = None, window_of(i, total, count)
            frame = np.frombuffer(raw, np.uint8).reshape(h, w, 3)  # [H, W, 3]
            score = sharpness(frame)
            if best is None or score > best[0]:
                best = (score, i, frame)
            if progress is not None:
                progress(i + 1, total)
        frames.close()
    except (RuntimeError, OSError, ValueError, StopIteration) as e:
        raise DataError(f"{video}: ffmpeg failed while decoding it ({_first_line(e)}); "
                        f"{hint}.") from None
    if best is not None:
        stored.append(_store_frame(best, video, images_dir, max_size))
    if not stored:
        raise DataError(f"{video}: ffmpeg decoded no frames from it; {hint}.")
    return stored


def _store_frame(best: tuple[float, int, np.ndarray] | None, video: Path, images_dir: Path,
                 max_size: int | None) -> StoredImage:
    score, index, frame = best  # type: ignore[misc]  # a window always has a frame
    image = Image.fromarray(frame)
    size = fitted_size(image.size, max_size)
    if size != image.size:
        image = image.resize(size, Image.LANCZOS)
    name = f"frame_{index:05d}.jpg"
    image.save(images_dir / name, quality=JPEG_QUALITY)
    return StoredImage(name, f"{video.name}#{index}", score)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by extension, case-insensitive), sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def import_photos(folder: Path, images_dir: Path, max_size: int | None,
                  progress: Progress | None = None) -> list[StoredImage]:
    """Copy the photographs of ``folder`` to ``images_dir`` upright (EXIF orientation applied)
    and shrunk to ``max_size`` on the long side. A file that needs neither is copied byte for
    byte; others are re-encoded in their format (JPEG at quality :data:`JPEG_QUALITY`; TIFF,
    BMP and WebP become PNG). Raises DataError for an unreadable file and for photos whose
    sizes differ after rotation (a scene needs one size: nerfmine's loaders refuse mixed
    sizes)."""
    files = image_files(folder)
    stored: list[StoredImage] = []
    sizes: dict[tuple[int, int], list[str]] = {}
    for k, path in enumerate(files):
        try:
            with Image.open(path) as opened:
                exif = opened.getexif()
                rotated = exif.get(_EXIF_ORIENTATION, 1) not in (0, 1)
                camera = _exif_camera(exif)
                upright = ImageOps.exif_transpose(opened)
                size = fitted_size(upright.size, max_size)
                image = upright.convert("RGBA" if "A" in upright.getbands() else "RGB")
                exif.pop(_EXIF_ORIENTATION, None)  # the pixels are upright now
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read it as an image ({_first_line(e)}); remove it "
                            f"from {folder} or convert it to JPEG or PNG.") from None
        suffix = path.suffix.lower()
        keep_format = suffix in (".jpg", ".jpeg", ".png")
        name = path.name if keep_format else path.stem + ".png"
        if size == image.size and not rotated and keep_format:
            shutil.copyfile(path, images_dir / name)
        else:
            if size != image.size:
                image = image.resize(size, Image.LANCZOS)
            _save(image, images_dir / name, exif)
        sizes.setdefault(size, []).append(name)
        stored.append(StoredImage(name, str(path), sharpness(np.asarray(image)), camera))
        if progress is not None:
            progress(k + 1, len(files))
    if len(sizes) > 1:
        common = max(sizes, key=lambda s: len(sizes[s]))
        odd = [f"{n} ({s[0]}x{s[1]})" for s, names in sizes.items() if s != common
               for n in names]
        raise DataError(f"{folder}: the photos have {len(sizes)} different sizes after EXIF "
                        f"rotation; most are {common[0]}x{common[1]}, but "
                        f"{', '.join(odd[:5])}{' ...' if len(odd) > 5 else ''} are not. A scene "
                        "needs one size (and one orientation): remove or crop those photos.")
    return stored


def _exif_camera(exif: Image.Exif) -> str:
    """Make, model and focal length from EXIF ("" without them): photos that share them share
    one lens, hence one COLMAP camera."""
    focal = exif.get_ifd(0x8769).get(0x920A)  # Exif IFD: FocalLength
    parts = [exif.get(0x010F), exif.get(0x0110), focal]  # Make, Model
    return " ".join(str(p).strip() for p in parts if p is not None)


def _save(image: Image.Image, path: Path, exif: Image.Exif | None = None) -> None:
    """Save in the format of ``path``'s suffix, keeping the EXIF (COLMAP reads the focal
    length from it for its first guess)."""
    extra = {"exif": exif.tobytes()} if exif else {}
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.convert("RGB").save(path, quality=JPEG_QUALITY, **extra)
    else:
        image.save(path, **extra)


def write_downscaled(images_dir: Path, names: list[str], factors: tuple[int, ...],
                     progress: Progress | None = None) -> list[int]:
    """Write ``images_dir``'s ``names`` box-shrunk ``f`` times (width // f by height // f, as
    nerfmine's ``--downscale`` computes it) to ``images_{f}/`` beside it, for each factor whose
    images keep at least one pixel; returns those factors."""
    done = 0
    written: list[int] = []
    for k, name in enumerate(names):
        with Image.open(images_dir / name) as image:
            image.load()
            for f in factors:
                w, h = image.width // f, image.height // f
                if w < 1 or h < 1:
                    continue
                folder = images_dir.parent / f"{images_dir.name}_{f}"
                folder.mkdir(exist_ok=True)
                _save(image.resize((w, h), Image.BOX), folder / name)
                if k == 0:
                    written.append(f)
        done += 1
        if progress is not None:
            progress(done, len(names))
    return written
