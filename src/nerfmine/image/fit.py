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

Run folder: ``config.json`` (the resolved config), ``checkpoint.pt`` (atomic, hashed),
``metrics.json``, ``psnr_curve.png`` and ``reconstruction.png`` (the full image, rendered in
tiles, clipped to [0, 1] and 8-bit). Resume continues bit-exactly on the same device: the
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
from nerfmine.image.field import ImageField, pixel_positions
from nerfmine.image.io import file_sha256, read_image
from nerfmine.metrics import psnr
from nerfmine.plots import plot_psnr_curve
from nerfmine.run_folder import atomic_save_image

KIND = "nerfmine-image"


class ImageFit(FitLoop):
    """One image fit and its run folder. :meth:`create` starts one, :meth:`resume` continues
    one; :meth:`train` trains to ``config.steps`` and writes the folder's files (the three are
    :class:`~nerfmine.fit_loop.FitLoop`'s)."""

    COMMAND, METRIC, SOURCE = "image", "psnr", "image"
    KIND = KIND
    CONFIG_CLASS, CONFIG_KEY = ImageConfig, "image_config"
    WRONG_KIND = ("not an image run's checkpoint (nerfmine image writes those); resume NeRF "
                  "runs with 'nerfmine train --resume'")
    RESUMABLE = ("steps", "eval_every", "render_tile")
    RESUMABLE_FLAGS = "--steps, --eval-every and --render-tile"

    def __init__(self, config: ImageConfig, image_path: Path, run_dir: Path) -> None:
        self._start(config, run_dir)
        self.image_path = Path(image_path)
        image = read_image(self.image_path)  # [H, W, 3]
        self.image_sha256 = file_sha256(self.image_path)
        self.height, self.width = image.shape[:2]
        self.target = torch.from_numpy(image).to(self.device)  # [H, W, 3]
        self.target_flat = self.target.reshape(-1, 3)  # [H*W, 3]
        self.field = ImageField(config, self.width, self.backend, config.seed).to(self.device)
        self._start_training(l2_reg=0.0)

    # ------------------------------------------------------------------ training

    def _draw_pixels(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.height * self.width
        pixel = torch.randint(n, (self.config.pixels_per_step,), generator=self.generator,
                              device=self.device)  # [B]
        return pixel_positions(pixel, self.height, self.width), self.target_flat[pixel]

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

    def evaluate(self) -> tuple[float, torch.Tensor]:
        """PSNR over the whole image and the render [H, W, 3]."""
        image = self.field.render(self.height, self.width, self.config.render_tile)
        return psnr(image, self.target), image

    # ------------------------------------------------------------------ outputs

    def _source_state(self) -> dict[str, Any]:
        return {"path": str(self.image_path.resolve()), "sha256": self.image_sha256,
                "height": self.height, "width": self.width}

    def _write_outputs(self, value: float, image: torch.Tensor) -> dict[str, Any]:
        from PIL import Image

        self._save()
        pixels = (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
        atomic_save_image(self.run_dir / "reconstruction.png", Image.fromarray(np.asarray(pixels)))
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
            "mean_hard_fraction": self.miner.mean_fraction() if self.miner is not None else None,
            "curve": self.curve,
        }
        return self._write_metrics(metrics)

