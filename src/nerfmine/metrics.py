"""Image quality metrics, as ../shared/docs/benchmark-protocol.md defines them.

PSNR: -10 log10(MSE) on float sRGB values in [0, 1], predictions clipped to [0, 1].
SSIM: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), data range 1, K1 0.01,
K2 0.03, mean over RGB channels, over the valid region only (no padding). This is nerfmine's own
torch implementation ("nerfmine.metrics.ssim"); tests check it against scikit-image's
structural_similarity with the same settings (gaussian_weights, use_sample_covariance=False).
LPIPS needs pretrained network weights that cannot be downloaded here: it is reported as
"not measured".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

LPIPS_NOT_MEASURED = "not measured (LPIPS network weights are not available)"


@dataclass
class EvalResult:
    """One evaluation of a run: mean PSNR and SSIM over a split at a point of training."""

    clock: float
    step: int
    psnr: float
    ssim: float
    per_image: list[dict[str, Any]] = field(default_factory=list)
    mean_hard_fraction: float | None = None

    def summary(self) -> dict[str, Any]:
        """The point of the PSNR curve (metrics.json's ``curve``), without the per-image list."""
        return {"clock": self.clock, "step": self.step, "psnr": self.psnr, "ssim": self.ssim,
                "mean_hard_fraction": self.mean_hard_fraction}


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images [..., 3] with values in [0, 1]; prediction is clipped to [0, 1]."""
    mse = torch.mean((prediction.clamp(0, 1).double() - target.double()) ** 2).item()
    return psnr_from_mse(mse)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error over values in [0, 1] (inf for 0)."""
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()  # [size]


def ssim(
    prediction: torch.Tensor,
    target: torch.Tensor,
    window_size: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
) -> float:
    """Mean SSIM of two images [H, W, 3] (prediction clipped to [0, 1]), valid region only."""
    if prediction.shape != target.shape or prediction.dim() != 3:
        raise ValueError(f"ssim expects two [H, W, C] images, got {tuple(prediction.shape)} "
                         f"and {tuple(target.shape)}")
    height, width, channels = prediction.shape
    if min(height, width) < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size} pixels")
    x = prediction.clamp(0, 1).double().permute(2, 0, 1).unsqueeze(1)  # [C, 1, H, W]
    y = target.double().permute(2, 0, 1).unsqueeze(1)
    g = _gaussian_window(window_size, sigma, x.dtype, x.device)
    gx, gy = g.view(1, 1, 1, -1), g.view(1, 1, -1, 1)

    def blur(img: torch.Tensor) -> torch.Tensor:  # separable Gaussian, valid region
        return F.conv2d(F.conv2d(img, gx), gy)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean().item()
