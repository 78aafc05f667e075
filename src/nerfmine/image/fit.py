"""Fitting an image: the training step (plain L2 or hard sample mining over pixels), the PSNR
curve, the run folder's files and resume.

The mining step (docs/hard-sample-mining.md, with pixels as the samples and the RGB outputs as
the raw outputs):

1. draw B pixels uniformly with replacement; first pass over all of them without a graph;
2. the output gradient of the loss ``L = (1/B) sum_i ||rgb_i - target_i||^2`` in closed form,
   ``dL/d rgb_i = 2 (rgb_i - target_i) / B`` (the output is linear: no activation to undo);
3. :meth:`HardSampleMiner.mine` draws b of them (successive sampling proportional to the L2 norm
   of that gradient, b from tau_bar as in NeRF);
4. second pass with the graph on the drawn pixels (padding slots get a zero gradient) and the
   backward with the cached gradients injected; then the Adam step.

The plain step ("none") runs one pass with the graph over the B pixels and backpropagates L.

Where the target pixels live (``pixels_on``): on the device (the whole image as float32, the
fast path) or on the host, for images larger than the device's memory: each step's pixel
indices are drawn on the device as always, read back, gathered from the decoded image or the
memory-mapped ``.npy`` file and copied over (one host round trip a step), and the evaluation
renders and scores the image a band of rows at a time, keeping only the 8-bit reconstruction on
the host. Both give the same draws and the same pixel values, so the same fit. "auto" picks the
host for a memory-mapped file and for an image whose float32 copy would take more than a
quarter of the device's free memory.

Run folder: ``config.json`` (the resolved config), ``checkpoint.pt`` (atomic, hashed),
``metrics.json``, ``psnr_curve.png``, ``reconstruction.png`` (the full image, rendered in
tiles, clipped to [0, 1] and 8-bit) and ``crops.png`` (full-resolution crops of the original
beside the fit, :mod:`nerfmine.image.crops`). Resume continues bit-exactly on the same device: the
checkpoint holds the parameters, Adam's moments, the miner's buffers and the state of the one
generator that draws pixels and mining keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerfmine.fit_loop import FitLoop
from nerfmine.image.config import ImageConfig
from nerfmine.image.crops import write_crops
from nerfmine.image.field import ImageField, pixel_positions
from nerfmine.image.io import ImageSource, file_sha256, open_image
from nerfmine.metrics import psnr, psnr_from_mse
from nerfmine.plots import plot_psnr_curve
from nerfmine.run_folder import atomic_save_image

KIND = "nerfmine-image"


class ImageFit(FitLoop):
    """One image fit and its run folder. :meth:`create` starts one, :meth:`resume` continues
    one; :meth:`train` trains to ``config.steps`` or ``config.seconds`` and writes the folder's
    files (the three are :class:`~nerfmine.fit_loop.FitLoop`'s)."""

    COMMAND, METRIC, SOURCE = "image", "psnr", "image"
    KIND = KIND
    CONFIG_CLASS, CONFIG_KEY = ImageConfig, "image_config"
    WRONG_KIND = ("not an image run's checkpoint (nerfmine image writes those); resume NeRF "
                  "runs with 'nerfmine train --resume'")
    RESUMABLE = ("steps", "seconds", "eval_at", "eval_every", "render_tile", "pixels_on")
    RESUMABLE_FLAGS = ("--steps, --seconds, --eval-at, --eval-every, --render-tile and "
                       "--pixels-on")

    def __init__(self, config: ImageConfig, image_path: Path, run_dir: Path) -> None:
        self._start(config, run_dir)
        self.image_path = Path(image_path)
        self.source: ImageSource | None = open_image(self.image_path)
        self.image_sha256 = file_sha256(self.image_path)
        self.height, self.width = self.source.height, self.source.width
        self.pixels_on = self._choose_pixels_on()
        self.target: torch.Tensor | None = None  # [H, W, 3] on the device, or None: host
        if self.pixels_on == "device":
            self.target = torch.from_numpy(self.source.whole()).to(self.device)
            if self.device.type != "cpu":  # on a CPU the target shares the decoded array
                self.source = None  # freed; crops.png reads the file again at the end
        self.field = ImageField(config, self.width, self.backend, config.seed).to(self.device)
        self._start_training(l2_reg=0.0)

    def _choose_pixels_on(self) -> str:
        """``config.pixels_on``, with "auto" resolved (see the module docstring)."""
        if self.config.pixels_on != "auto":
            return self.config.pixels_on
        if self.source.mapped:
            return "host"
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if self.source.nbytes_float32 > free // 4:
                return "host"
        return "device"

    # ------------------------------------------------------------------ training

    def _draw_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.height * self.width
        pixel = torch.randint(n, (self.config.pixels_per_step,), generator=self.generator,
                              device=self.device)  # [B]
        if self.target is not None:
            target = self.target.reshape(-1, 3)[pixel]  # [B, 3]
        else:  # gathered on the host from the decoded or memory-mapped image
            values = self.source.pixels(pixel.cpu().numpy())  # [B, 3]
            target = torch.from_numpy(values).to(self.device)
        return pixel_positions(pixel, self.height, self.width), target

    def train_step(self) -> torch.Tensor:
        """One step; returns the loss L of the B pixels (a device scalar, no host read)."""
        positions, target = self._draw_pixels()  # [B, 2], [B, 3]
        b = positions.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        if self.miner is None:
            rgb = self.field(positions)  # [B, 3]
            loss = (rgb - target).square().sum(dim=1).mean()
            loss.backward()
        else:
            with torch.no_grad():
                rgb = self.field(positions)  # [B, 3], no graph
                grad_rgb = 2.0 * (rgb - target) / b  # [B, 3] = dL/d rgb
                loss = (rgb - target).square().sum(dim=1).mean()
                mined = self.miner.mine(grad_rgb, b, generator=self.generator,
                                        backend=self.backend)
            out = self.field(positions[mined.indices])  # [S, 3], with graph
            out.backward(mined.injected_grads(grad_rgb))
        self.optimizer.step()
        self.step += 1
        return loss.detach()

    def _evaluate_point(self) -> tuple[float, torch.Tensor]:
        return self.evaluate()

    def evaluate(self) -> tuple[float, torch.Tensor | np.ndarray]:
        """PSNR over the whole image and the render: [H, W, 3] float32 on the device, or with
        the pixels on the host the 8-bit reconstruction [H, W, 3] on the host (rendered and
        scored a band of rows at a time)."""
        if self.target is not None:
            image = self.field.render(self.height, self.width, self.config.render_tile)
            return psnr(image, self.target), image
        band = max(1, self.config.render_tile // self.width)  # rows per pass
        out = np.empty((self.height, self.width, 3), dtype=np.uint8)
        squared = torch.zeros((), dtype=torch.float64, device=self.device)
        for start in range(0, self.height, band):
            stop = min(start + band, self.height)
            pred = self.field.render_rows(start, stop, self.height, self.width)  # [h, W, 3]
            target = torch.from_numpy(self.source.rows(start, stop)).to(self.device)
            squared += (pred.clamp(0, 1).double() - target.double()).square().sum()
            out[start:stop] = _to_8bit(pred).cpu().numpy()
        mse = squared.item() / (self.height * self.width * 3)
        return psnr_from_mse(mse), out

    # ------------------------------------------------------------------ outputs

    def _source_state(self) -> dict[str, Any]:
        return {"path": str(self.image_path.resolve()), "sha256": self.image_sha256,
                "height": self.height, "width": self.width}

    def _write_outputs(self, value: float, image: torch.Tensor | np.ndarray) -> dict[str, Any]:
        from PIL import Image

        self._save()
        pixels = image if isinstance(image, np.ndarray) else _to_8bit(image).cpu().numpy()
        atomic_save_image(self.run_dir / "reconstruction.png", Image.fromarray(np.asarray(pixels)))
        source = self.source if self.source is not None else open_image(self.image_path)
        write_crops(self.run_dir / "crops.png", source, pixels,
                    f"{self.image_path.name}, step {self.step}, PSNR {value:.2f} dB")
        plot_psnr_curve(self.curve, self.run_dir / "psnr_curve.png",
                        title=f"{self.image_path.name} ({self.config.mining})")
        metrics = {
            "image": str(self.image_path.resolve()),
            "width": self.width,
            "height": self.height,
            **self._run_metrics(),
            "pixels_per_second": self.step * self.config.pixels_per_step / max(self.clock, 1e-9),
            "psnr": value,
            "psnr_over": "the whole image, prediction clipped to [0, 1]",
            "pixels_on": self.pixels_on,
            "mean_hard_fraction": self.miner.mean_fraction() if self.miner is not None else None,
            "curve": self.curve,
        }
        return self._write_metrics(metrics)


def _to_8bit(image: torch.Tensor) -> torch.Tensor:
    """Float RGB -> uint8, clipped to [0, 1] and rounded (the reconstruction PNG's values)."""
    return (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
