"""The image field: a 2-D multiresolution hash grid and an MLP, pixel position -> RGB.

Pixel (row, col) of an H x W image sits at ``((col + 0.5) / W, (row + 0.5) / H)`` in [0, 1]^2
(x along the width), so a non-square image is stretched onto the unit square, as instant-ngp's
image sampling does. The MLP is tiny-cuda-nn's: no biases, ReLU hidden layers, linear output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nerfmine.field import _xavier_uniform
from nerfmine.image.config import ImageConfig
from nerfmine.ops.hash_grid import HashGridSpec, hash_grid_encode, init_hash_table


def pixel_positions(pixel: Tensor, height: int, width: int) -> Tensor:
    """Flat pixel indices ``row * W + col`` [N] -> positions [N, 2] float32 in [0, 1]^2."""
    row = torch.div(pixel, width, rounding_mode="floor")
    col = pixel - row * width
    return torch.stack(((col.float() + 0.5) / width, (row.float() + 0.5) / height), dim=1)


class ImageField(nn.Module):
    """Hash grid (``n_dims=2``) -> MLP -> RGB. Parameters: ``table`` and ``layers``."""

    def __init__(self, config: ImageConfig, width: int, backend: str = "torch",
                 seed: int = 0) -> None:
        super().__init__()
        self.backend = backend
        self.spec = HashGridSpec(
            n_levels=config.n_levels, n_features=config.n_features,
            log2_table_size=config.log2_table_size, base_resolution=config.base_resolution,
            max_resolution=config.finest_resolution(width), n_dims=2)
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(init_hash_table(self.spec, generator=gen))  # [T_all, F]
        widths = [self.spec.output_dim] + [config.hidden_dim] * config.n_hidden_layers + [3]
        self.layers = nn.ParameterList(
            nn.Parameter(_xavier_uniform(out_dim, in_dim, gen))
            for in_dim, out_dim in zip(widths[:-1], widths[1:]))

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.layers)

    def forward(self, positions: Tensor) -> Tensor:
        """Positions [N, 2] in [0, 1]^2 -> RGB [N, 3] float32 (linear, unclamped)."""
        h = hash_grid_encode(positions, self.table, self.spec, backend=self.backend)
        for i, weight in enumerate(self.layers):
            h = F.linear(h, weight)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h

    @torch.no_grad()
    def render(self, height: int, width: int, tile: int) -> Tensor:
        """The full image [H, W, 3] float32, ``tile`` pixels per forward pass."""
        device = self.table.device
        out = torch.empty(height * width, 3, dtype=torch.float32, device=device)
        for start in range(0, height * width, tile):
            pixel = torch.arange(start, min(start + tile, height * width), device=device)
            out[start : start + pixel.shape[0]] = self(pixel_positions(pixel, height, width))
        return out.reshape(height, width, 3)
