"""Scoring a trained scene as ../shared/docs/benchmark-protocol.md defines it.

:class:`Evaluator` renders a :class:`~nerfmine.scene.TrainedScene` (its EMA weights) from every
camera of a split, over a white background, and compares each render with the photograph
composited over white: PSNR and SSIM per image and their means (:mod:`nerfmine.metrics`).
:func:`write_metrics` and :func:`plot_curve` write a run's ``metrics.json`` and
``psnr_curve.png``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerfmine.errors import ConfigError
from nerfmine.metrics import EvalResult, psnr, ssim
from nerfmine.run_folder import atomic_save_image, atomic_write_text
from nerfmine.scene import WHITE, TrainedScene

SSIM_WINDOW = 11
SSIM_IMPLEMENTATION = (f"nerfmine.metrics.ssim (Gaussian {SSIM_WINDOW}x{SSIM_WINDOW}, sigma 1.5, "
                       "valid)")


class Evaluator:
    """PSNR and SSIM of ``scene`` on ``data`` (a SceneData split; by default the run's
    evaluation split, loaded at first use), over at most ``max_images`` of its images (default:
    the run's ``eval.max_images``, None: all)."""

    def __init__(self, scene: TrainedScene, data=None, max_images: int | None = None):
        self.scene = scene
        self._data = data
        self.max_images = scene.config.eval.max_images if max_images is None else max_images

    @property
    def data(self):
        """The split being evaluated (a :class:`~nerfmine.data.SceneData`)."""
        if self._data is None:
            self._data = self.scene.load_split(self.scene.config.data.eval_split)
        return self._data

    def check(self) -> None:
        """Raise :class:`~nerfmine.errors.ConfigError` when the split cannot be scored: its
        images smaller than SSIM's window (a training run checks this before it starts)."""
        data = self.data
        if len(data) == 0:
            return
        height, width = (int(s) for s in data.images.shape[1:3])
        if min(height, width) < SSIM_WINDOW:
            split = self.scene.config.data.eval_split
            raise ConfigError(
                f"the '{split}' images ({data.image_paths[0].parent}) are {width}x{height} "
                "pixels at this "
                f"downscale; SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} (its Gaussian "
                "window). Use a smaller --downscale.")

    @torch.no_grad()
    def evaluate(self, save_dir: Path | None = None,
                 mean_hard_fraction: float | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 on_batch: Callable[[], None] | None = None) -> EvalResult:
        """Render and score the split; ``save_dir`` receives each render as ``<name>.png``.

        ``progress(done, total)`` is called before the first image and after each one;
        ``on_batch`` after every batch of network evaluations inside a render (it may raise to
        stop: an evaluation of a young field, whose occupancy grid is still nearly full, can
        take minutes per image on a CPU)."""
        scene, data = self.scene, self.data
        self.check()
        count = len(data) if not self.max_images else min(len(data), self.max_images)
        cameras = scene.to_unit(data.cameras())
        settings = dataclasses.replace(scene.render_settings, on_batch=on_batch)
        per_image = []
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
        if progress is not None:
            progress(0, count)
        with scene.ema_weights():
            for i in range(count):
                out = scene.render(cameras, i, WHITE, settings)
                rgba = data.images[i].to(scene.device).float() / 255.0
                gt = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
                pred = out["rgb"].clamp(0, 1)
                name = data.image_paths[i].stem
                per_image.append({"name": name, "psnr": psnr(pred, gt), "ssim": ssim(pred, gt)})
                if save_dir is not None:
                    save_png(save_dir / f"{name}.png", pred)
                if progress is not None:
                    progress(i + 1, count)
        return EvalResult(
            clock=scene.clock, step=scene.step,
            psnr=float(np.mean([r["psnr"] for r in per_image])),
            ssim=float(np.mean([r["ssim"] for r in per_image])),
            per_image=per_image, mean_hard_fraction=mean_hard_fraction)


def save_png(path: Path, image: torch.Tensor) -> None:
    """An [H, W, 3] image with values in [0, 1] as an 8-bit PNG, written atomically."""
    from PIL import Image

    array = (image.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    atomic_save_image(path, Image.fromarray(array))


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Write ``run_dir/metrics.json`` atomically (a killed write leaves the previous one)."""
    atomic_write_text(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def plot_curve(run_dir: Path, history: list[EvalResult], title: str) -> None:
    """``run_dir/psnr_curve.png``: PSNR against training time. A plot that fails leaves its
    reason in ``plot_error.txt`` instead: a plot must never lose a run."""
    from nerfmine.plots import plot_psnr_curve

    try:
        plot_psnr_curve([h.summary() for h in history], Path(run_dir) / "psnr_curve.png",
                        title=title)
    except Exception as exc:  # noqa: BLE001 - a plot must never lose a run
        (Path(run_dir) / "plot_error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
