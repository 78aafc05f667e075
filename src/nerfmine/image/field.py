"""The image field: a 2-D multiresolution hash grid and an MLP, pixel position -> RGB.

Pixel (row, col) of an H x W image sits at ``((col + 0.5) / W, (row + 0.5) / H)`` in [0, 1]^2
(x along the width), so a non-square image is stretched onto the unit square, as instant-ngp's
image sampling does. The MLP is tiny-cuda-nn's: no biases, ReLU hidden layers, linear output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nerfmine.grid_mlp import GridMLP
from nerfmine.image.config import ImageConfig
from nerfmine.ops.hash_grid import HashGridSpec


def pixel_positions(pixel: Tensor, height: int, width: int) -> Tensor:
    """Flat pixel indices ``row * W + col`` [N] -> positions [N, 2] float32 in [0, 1]^2."""
    row = torch.div(pixel, width, rounding_mode="floor")
    col = pixel - row * width
    return torch.stack(((col.float() + 0.5) / width, (row.float() + 0.5) / height), dim=1)


class ImageField(GridMLP):
    """Hash grid (``n_dims=2``) -> MLP -> RGB. Parameters: ``table`` and ``layers``."""

    def __init__(self, config: ImageConfig, width: int, backend: str = "torch",
                 seed: int = 0) -> None:
        spec = HashGridSpec(
            n_levels=config.n_levels, n_features=config.n_features,
            log2_table_size=config.log2_table_size, base_resolution=config.base_resolution,
            max_resolution=config.finest_resolution(width), n_dims=2)
        super().__init__(spec, config.hidden_dim, config.n_hidden_layers, 3, backend, seed)

    def forward(self, positions: Tensor) -> Tensor:
        """Positions [N, 2] in [0, 1]^2 -> RGB [N, 3] float32 (linear, unclamped)."""
        return self.network(positions)

    @torch.no_grad()
    def render_rows(self, start: int, stop: int, height: int, width: int) -> Tensor:
        """Rows ``start:stop`` of the H x W image [stop - start, W, 3] float32, one pass."""
        device = self.table.device
        pixel = torch.arange(start * width, stop * width, device=device)
        return self(pixel_positions(pixel, height, width)).reshape(stop - start, width, 3)

    @torch.no_grad()
    def render(self, height: int, width: int, tile: int) -> Tensor:
        """The full image [H, W, 3] float32, ``tile`` pixels per forward pass."""
        device = self.table.device
        out = torch.empty(height * width, 3, dtype=torch.float32, device=device)
        for start in range(0, height * width, tile):
            pixel = torch.arange(start, min(start + tile, height * width), device=device)
            out[start : start + pixel.shape[0]] = self(pixel_positions(pixel, height, width))
        return out.reshape(height, width, 3)
