"""Reading the image to fit: PNG, JPEG, TIFF, ... through Pillow; EXR through the OpenEXR
bindings (``pip install 'nerfmine[image]'``), float TIFF and HDR through imageio where it has
a backend for them; a NumPy ``.npy`` array [H, W, C] (uint8, uint16, float16 or float32),
memory-mapped rather than read, for images larger than the host's memory. Every failure is a
:class:`DataError` naming the file.

Values: 8-bit images are divided by 255, 16-bit ones by 65535, float images are kept as they
are (linear HDR values may exceed 1; the PSNR clips the prediction to [0, 1]). Grey images are
repeated to RGB; an alpha channel is dropped. Pillow's guard against decompression bombs
stays (it is process-wide state); ``nerfmine image`` lifts it for the image it is given, since
a gigapixel photograph is the point of the primitive.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from nerfmine.errors import DataError

_IMAGEIO_SUFFIXES = (".exr", ".tif", ".tiff", ".hdr")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ImageSource:
    """The pixels of the image to fit, read on demand: :meth:`pixels` gathers flat pixel
    indices, :meth:`rows` a band of rows, both as float32 RGB with :func:`read_image`'s values.
    ``array`` is a decoded float32 [H, W, 3] image or a memory-mapped ``.npy`` array [H, W, C]
    converted per access (so that an image larger than memory is read page by page)."""

    def __init__(self, array: np.ndarray, path: Path) -> None:
        self.array, self.path = array, path
        self.height, self.width = int(array.shape[0]), int(array.shape[1])
        self.mapped = isinstance(array, np.memmap)

    @property
    def nbytes_float32(self) -> int:
        """Bytes of the whole image as float32 RGB (what holding it on a device costs)."""
        return self.height * self.width * 3 * 4

    def _convert(self, values: np.ndarray) -> np.ndarray:
        """[..., C] raw values -> float32 [..., 3], :func:`read_image`'s rules."""
        values = _normalise(np.asarray(values), "")
        if values.shape[-1] in (1, 2):
            values = np.repeat(values[..., :1], 3, axis=-1)
        return np.ascontiguousarray(values[..., :3], dtype=np.float32)

    def pixels(self, flat: np.ndarray) -> np.ndarray:
        """Pixels ``row * W + col`` [N] -> float32 [N, 3]."""
        rows, cols = np.divmod(np.asarray(flat, dtype=np.int64), self.width)
        return self._convert(self.array[rows, cols])

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` -> float32 [stop - start, W, 3]."""
        return self._convert(self.array[start:stop])

    def whole(self) -> np.ndarray:
        """The whole image, float32 [H, W, 3] (in memory)."""
        return self.rows(0, self.height)


def open_image(path: Path) -> ImageSource:
    """The image at ``path`` as an :class:`ImageSource`: a ``.npy`` file memory-mapped, any
    other format decoded by :func:`read_image`."""
    path = Path(path)
    if path.suffix.lower() == ".npy" and path.is_file():
        return ImageSource(_map_npy(path), path)
    return ImageSource(read_image(path), path)


_NPY_DTYPES = (np.uint8, np.uint16, np.float16, np.float32)


def _map_npy(path: Path) -> np.memmap:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a NumPy array file that can be memory-mapped ({exc}); "
                        "save the image with numpy.save as an [H, W, 3] array") from None
    if not isinstance(array, np.memmap) or array.ndim not in (2, 3) or (
            array.ndim == 3 and array.shape[2] not in (1, 2, 3, 4)):
        raise DataError(f"{path}: expected an [H, W] or [H, W, C] array with C from 1 to 4, "
                        f"got shape {list(np.shape(array))}; save a single 2-D image")
    if not array.dtype.isnative:
        raise DataError(f"{path}: the array's bytes are in the other byte order ({array.dtype}); "
                        "re-save it in this machine's order: numpy.save(path, "
                        "a.astype(a.dtype.newbyteorder('=')))")
    if array.dtype not in _NPY_DTYPES:
        raise DataError(f"{path}: the array's type is {array.dtype}; expected uint8, uint16, "
                        "float16 or float32 (convert it with astype before saving)")
    if not array.flags.c_contiguous:
        raise DataError(f"{path}: the array is stored column-major (Fortran order), so every "
                        "band of rows would read the whole file; re-save it row-major: "
                        "numpy.save(path, numpy.ascontiguousarray(a))")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{path}: the image has size {array.shape[1]}x{array.shape[0]} (0 "
                        "pixels); pass an image with pixels")
    array = array if array.ndim == 3 else array[:, :, None]
    if array.dtype.kind == "f":  # checked once, a band at a time, before any training
        band = max(1, (64 << 20) // max(1, array.shape[1] * array.shape[2] * array.itemsize))
        for start in range(0, array.shape[0], band):
            if not np.isfinite(array[start : start + band]).all():
                raise DataError(f"{path}: the image holds NaN or infinite values (in rows "
                                f"{start} to {min(start + band, array.shape[0]) - 1}); fix or "
                                "re-export it")
    return array


def read_image(path: Path) -> np.ndarray:
    """The image at ``path`` as float32 [H, W, 3]; a :class:`DataError` if it cannot be."""
    path = Path(path)
    if not path.is_file():
        what = "a folder, not an image file" if path.is_dir() else "no such file"
        raise DataError(f"{path}: {what}; pass the path of a PNG, JPEG, TIFF, EXR or .npy image")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (0 bytes); pass an intact image file")
    if path.suffix.lower() == ".npy":
        return open_image(path).whole()
    if path.suffix.lower() == ".exr":
        array = _read_openexr(path)
        if array is not None:
            return _to_rgb(array, path)
    try:
        array = _read_pillow(path)
    except _NotPillow as exc:
        array = _read_imageio(path, exc.reason)
    return _to_rgb(array, path)


def _read_openexr(path: Path) -> np.ndarray | None:
    """An EXR file's RGB(A) or Y channels as float32 [H, W, C] through the OpenEXR bindings;
    None when they are not installed (imageio is tried next)."""
    try:
        import OpenEXR
    except ImportError:
        return None
    try:
        with OpenEXR.File(str(path)) as exr:
            channels = exr.channels()
            for name in ("RGBA", "RGB", "Y"):
                if name in channels:
                    return np.asarray(channels[name].pixels, dtype=np.float32)
            if all(c in channels for c in "RGB"):
                return np.stack([np.asarray(channels[c].pixels, dtype=np.float32)
                                 for c in "RGB"], axis=-1)
    except Exception as exc:  # noqa: BLE001 - every reader failure is the file's problem
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read the EXR image ({first}); the file is damaged "
                        "or not an EXR image; re-export it") from None
    raise DataError(f"{path}: the EXR image has channels {', '.join(sorted(channels))}; "
                    "expected R, G, B (and A) or Y; re-export it with colour channels")


class _NotPillow(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "PA", "1", "LA", "CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGBA" if "A" in image.mode or image.mode == "P"
                                      else "RGB")
            array = np.asarray(image)
            return _normalise(array, image.mode)
    except UnidentifiedImageError as exc:
        if path.suffix.lower() in _IMAGEIO_SUFFIXES:
            raise _NotPillow(str(exc)) from None
        raise DataError(f"{path}: not an image Pillow can read (damaged, or another kind of "
                        "file); pass a PNG, JPEG or TIFF image") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise DataError(f"{path}: the image is damaged or truncated ({exc}); re-export or "
                        "copy it again") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: Pillow refuses to decode it as a possible decompression bomb "
                        f"({exc}); nerfmine image lifts that limit for the image it is given; "
                        "in your own code set PIL.Image.MAX_IMAGE_PIXELS = None first") from None
    except MemoryError:
        raise DataError(f"{path}: the decoded image does not fit in this machine's memory; "
                        "save it as an uncompressed .npy array (numpy.save), which nerfmine "
                        "memory-maps instead of reading") from None


def _normalise(array: np.ndarray, mode: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16 or mode.startswith("I;16"):
        return array.astype(np.float32) / 65535.0
    if array.dtype == bool:
        return array.astype(np.float32)
    if mode == "I":  # 32-bit integer grey: Pillow's 16-bit PNG
        return array.astype(np.float32) / 65535.0
    return array.astype(np.float32, copy=False)  # float32 images are not copied again


def _read_imageio(path: Path, pillow_reason: str) -> np.ndarray:
    try:
        import imageio.v3 as iio
    except ImportError:
        raise DataError(f"{path}: reading this format needs imageio (pip install imageio "
                        "tifffile), or convert the image to a 16-bit PNG") from None
    try:
        array = np.asarray(iio.imread(path))
    except Exception as exc:  # noqa: BLE001 - every reader failure is the file's problem
        hint = ("no EXR reader is installed here: pip install 'nerfmine[image]' (the OpenEXR "
                "bindings), or convert it to a float TIFF or a 16-bit PNG"
                if path.suffix.lower() == ".exr"
                else "the file is damaged or not an image; re-export it")
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read the image ({first}); {hint}") from None
    if array.dtype in (np.uint8, np.uint16):
        return _normalise(array, "")
    return array.astype(np.float32)


def _to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"{path}: expected a grey, RGB or RGBA image, got an array of shape "
                        f"{list(array.shape)}; pass a single 2-D image")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{path}: the image has size {array.shape[1]}x{array.shape[0]} (0 "
                        "pixels); pass an image with pixels")
    if array.shape[2] in (1, 2):  # grey (with alpha)
        array = np.repeat(array[:, :, :1], 3, axis=2)
    array = np.ascontiguousarray(array[:, :, :3], dtype=np.float32)
    if not np.isfinite(array).all():
        raise DataError(f"{path}: the image holds NaN or infinite values; fix or re-export it")
    return array
