"""``crops.png`` of an image fit: full-resolution crops of the original beside the fit, so that a
reader sees the detail a downscaled reconstruction hides (the paper's gigapixel figures show
crops the same way).

Up to three square crops of side ``min(256, H // 3, W // 3)`` (so that a small image still has
a grid of at least 3 x 3 blocks to choose from) on a grid of such blocks: the block where the
8-bit reconstruction is worst (largest squared error), the one with the most detail in the
original (largest sum of absolute differences between neighbouring pixels) other than that one,
and the block at the image's centre (left out when it is one of the first two). The original
is read a band of blocks at a time (:class:`~nerfmine.image.io.ImageSource`), so an image on
the host or memory-mapped is never held whole as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerfmine.image.io import ImageSource

CROP = 256
"""Side of a crop in pixels (smaller for smaller images)."""
_GAP = 6  # pixels between the panels


@dataclass(frozen=True)
class Crop:
    label: str
    row: int
    col: int
    size: int


def choose_crops(source: ImageSource, recon: np.ndarray, size: int = CROP) -> list[Crop]:
    """The worst-fitted, the most detailed and the centre block (see the module docstring);
    ``recon`` is the reconstruction [H, W, 3] uint8."""
    h, w = source.height, source.width
    c = max(1, min(size, h // 3, w // 3))
    rows, cols = h // c, w // c
    error = np.zeros((rows, cols))
    detail = np.zeros((rows, cols))
    for i in range(rows):
        band = source.rows(i * c, (i + 1) * c)[:, : cols * c]  # [c, cols*c, 3]
        fit = recon[i * c : (i + 1) * c, : cols * c].astype(np.float32) / 255.0
        sq = ((np.clip(band, 0.0, 1.0) - fit) ** 2).sum(axis=2)  # [c, cols*c]
        error[i] = sq.reshape(c, cols, c).sum(axis=(0, 2))
        grey = band.mean(axis=2)
        dx = np.abs(np.diff(grey, axis=1, append=grey[:, -1:]))
        dy = np.abs(np.diff(grey, axis=0, append=grey[-1:, :]))
        detail[i] = (dx + dy).reshape(c, cols, c).sum(axis=(0, 2))
    worst = np.unravel_index(int(np.argmax(error)), error.shape)
    detail[worst] = -1.0  # a different block, where there is one
    busiest = np.unravel_index(int(np.argmax(detail)), detail.shape)
    centre = (min(rows - 1, (h // 2) // c), min(cols - 1, (w // 2) // c))
    chosen = [("largest error", worst)]
    if busiest != worst:
        chosen.append(("most detail", busiest))
    if centre not in (worst, busiest):
        chosen.append(("centre", centre))
    return [Crop(label, int(i) * c, int(j) * c, c) for label, (i, j) in chosen]


def write_crops(path: Path, source: ImageSource, recon: np.ndarray, title: str,
                size: int = CROP) -> list[Crop]:
    """Write ``path``: one row per crop, the original (left) beside the fit (right) at full
    resolution, each row labelled with the crop's place; returns the crops."""
    from PIL import Image, ImageDraw

    from nerfmine.run_folder import atomic_save_image

    crops = choose_crops(source, recon, size)
    c = crops[0].size
    label_h = 14
    width = max(2 * c + 3 * _GAP, 320)  # room for the labels beside small crops
    height = label_h + len(crops) * (c + label_h + _GAP) + _GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((_GAP, 1), f"{title}; left original, right fit", fill="black")
    y = label_h
    for crop in crops:
        draw.text((_GAP, y + 1), f"{crop.label}: rows {crop.row}-{crop.row + c - 1}, columns "
                                 f"{crop.col}-{crop.col + c - 1}", fill="black")
        y += label_h
        original = source.rows(crop.row, crop.row + c)[:, crop.col : crop.col + c]
        original = (np.clip(original, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        fitted = np.ascontiguousarray(recon[crop.row : crop.row + c, crop.col : crop.col + c])
        sheet.paste(Image.fromarray(original), (_GAP, y))
        sheet.paste(Image.fromarray(fitted), (2 * _GAP + c, y))
        y += c + _GAP
    atomic_save_image(Path(path), sheet)
    return crops
