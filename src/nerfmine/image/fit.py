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

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nerfmine.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from nerfmine.errors import ConfigError, DataError
from nerfmine.fit_loop import FitLoop, resolve_device
from nerfmine.image.config import ImageConfig
from nerfmine.image.field import ImageField, pixel_positions
from nerfmine.image.io import file_sha256, read_image
from nerfmine.metrics import psnr
from nerfmine.miner import HardSampleMiner
from nerfmine.optim import NGPAdam
from nerfmine.plots import plot_psnr_curve
from nerfmine.provenance import device_name, git_commit
from nerfmine.run_folder import (
    atomic_save_image,
    atomic_write_text,
)

KIND = "nerfmine-image"


class ImageFit(FitLoop):
    """One image fit and its run folder. :meth:`create` starts one, :meth:`resume` continues
    one; :meth:`train` trains to ``config.steps`` and writes the folder's files."""

    def __init__(self, config: ImageConfig, image_path: Path, run_dir: Path) -> None:
        self.config = config
        self.image_path = Path(image_path)
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        self.backend = config.backend
        if self.backend == "auto":
            self.backend = "triton" if self.device.type == "cuda" else "torch"
        image = read_image(self.image_path)  # [H, W, 3]
        self.image_sha256 = file_sha256(self.image_path)
        self.height, self.width = image.shape[:2]
        self.target = torch.from_numpy(image).to(self.device)  # [H, W, 3]
        self.target_flat = self.target.reshape(-1, 3)  # [H*W, 3]
        self.field = ImageField(config, self.width, self.backend, config.seed).to(self.device)
        self.optimizer = NGPAdam([self.field.table], self.field.mlp_parameters(), lr=config.lr,
                                 betas=config.betas, eps=config.eps, l2_reg=0.0,
                                 backend=self.backend)
        self.miner = HardSampleMiner().to(self.device) if config.mining == "hsm" else None
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.step = 0
        self.clock = 0.0
        self.curve: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, config: ImageConfig, image_path: Path, run_dir: Path) -> ImageFit:
        if (Path(run_dir) / CHECKPOINT_NAME).exists():
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume "
                              f"{run_dir} or choose another -o")
        return cls(config, image_path, run_dir)

    @classmethod
    def resume(cls, run_dir: Path, overrides: dict[str, Any] | None = None,
               image_path: Path | None = None) -> ImageFit:
        """Continue the run in ``run_dir``; ``overrides`` may change ``steps``, ``eval_every``
        and ``render_tile`` only; ``image_path`` replaces a moved image (same bytes)."""
        path = Path(run_dir) / CHECKPOINT_NAME
        state = load_checkpoint(path)
        if state.get("kind") != KIND:
            raise ConfigError(f"{path}: not an image run's checkpoint (nerfmine image writes "
                              "those); resume NeRF runs with 'nerfmine train --resume'")
        changed = sorted(set(overrides or {}) - {"steps", "eval_every", "render_tile"})
        if changed:
            raise ConfigError(f"--resume keeps the run's config; {', '.join(changed)} cannot "
                              "change (only --steps, --eval-every and --render-tile)")
        config = ImageConfig.from_dict({**state["image_config"], **(overrides or {})}, str(path))
        image_path = Path(image_path or state["image"]["path"])
        if not image_path.is_file():
            raise DataError(f"{image_path}: the run's image is not there any more; pass it "
                            f"again: nerfmine image IMAGE --resume {run_dir}")
        fit = cls(config, image_path, run_dir)
        if fit.image_sha256 != state["image"]["sha256"]:
            raise DataError(f"{image_path}: not the image this run was fitting (its content "
                            "changed); pass the original image, or start a new run")
        fit.field.load_state_dict(state["field"])
        fit.optimizer.load_state_dict(state["optimizer"])
        if fit.miner is not None:
            fit.miner.load_state_dict(state["miner"])
        fit.generator.set_state(state["generator"])
        fit.step, fit.clock, fit.curve = state["step"], state["clock"], list(state["curve"])
        return fit

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

    COMMAND, METRIC = "image", "psnr"

    def _evaluate_point(self) -> tuple[float, torch.Tensor]:
        return self.evaluate()

    def evaluate(self) -> tuple[float, torch.Tensor]:
        """PSNR over the whole image and the render [H, W, 3]."""
        image = self.field.render(self.height, self.width, self.config.render_tile)
        return psnr(image, self.target), image

    # ------------------------------------------------------------------ outputs

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "image_config": self.config.to_dict(),  # not "config": that is a NeRF run's
            "image": {"path": str(self.image_path.resolve()), "sha256": self.image_sha256,
                      "height": self.height, "width": self.width},
            "field": self.field.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "miner": self.miner.state_dict() if self.miner is not None else {},
            "generator": self.generator.get_state(),
            "step": self.step,
            "clock": self.clock,
            "curve": self.curve,
        }

    def _write_outputs(self, value: float, image: torch.Tensor) -> dict[str, Any]:
        from PIL import Image

        save_checkpoint(self.run_dir / CHECKPOINT_NAME, self.state_dict())
        pixels = (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
        atomic_save_image(self.run_dir / "reconstruction.png", Image.fromarray(np.asarray(pixels)))
        plot_psnr_curve(self.curve, self.run_dir / "psnr_curve.png",
                        title=f"{self.image_path.name} ({self.config.mining})")
        metrics = {
            "image": str(self.image_path.resolve()),
            "width": self.width,
            "height": self.height,
            "device": device_name(self.device),
            "commit": git_commit(),
            "backend": self.backend,
            "mining": self.config.mining,
            "preset": self.config.preset,
            "steps": self.step,
            "training_seconds": self.clock,
            "steps_per_second": self.step / max(self.clock, 1e-9),
            "pixels_per_second": self.step * self.config.pixels_per_step / max(self.clock, 1e-9),
            "psnr": value,
            "psnr_over": "the whole image, prediction clipped to [0, 1]",
            "mean_hard_fraction": self.miner.mean_fraction() if self.miner is not None else None,
            "curve": self.curve,
        }
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        return metrics

