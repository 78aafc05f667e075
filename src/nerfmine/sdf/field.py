"""The SDF field, a 3-D multiresolution hash grid and an MLP (unit-cube position -> signed
distance), and the MAPE loss with its closed-form output gradient.

The MLP is tiny-cuda-nn's: no biases, ReLU hidden layers, a linear output. The loss is
tiny-cuda-nn's MAPE (``losses/mape.h``), instant-ngp's SDF loss:
``L = (1/N) sum_i |pred_i - d_i| / (|d_i| + 0.01)``, whose output gradient is
``dL/dpred_i = sign(pred_i - d_i) / ((|d_i| + 0.01) N)`` (0 where pred_i = d_i, as autograd's
abs; tiny-cuda-nn's copysign gives +1 there, a measure-zero difference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nerfmine.grid_mlp import GridMLP
from nerfmine.ops.hash_grid import HashGridSpec
from nerfmine.sdf.config import SdfConfig

MAPE_EPSILON = 0.01
"""The offset of MAPE's denominator (tiny-cuda-nn: 1e-2)."""


def mape_terms(prediction: Tensor, distance: Tensor) -> Tensor:
    """Per-point MAPE terms ``|pred - d| / (|d| + 0.01)``. # [N]"""
    return (prediction - distance).abs() / (distance.abs() + MAPE_EPSILON)


def mape_loss(prediction: Tensor, distance: Tensor) -> Tensor:
    """MAPE of predictions [N] against distances [N]: a scalar."""
    return mape_terms(prediction, distance).mean()


def mape_output_grad(prediction: Tensor, distance: Tensor) -> Tensor:
    """dL/d prediction of :func:`mape_loss`, in closed form. # [N]"""
    n = max(prediction.shape[0], 1)
    return torch.sign(prediction - distance) / ((distance.abs() + MAPE_EPSILON) * n)


class SdfField(GridMLP):
    """Hash grid (``n_dims=3``) -> MLP -> signed distance. Parameters: ``table``, ``layers``."""

    def __init__(self, config: SdfConfig, backend: str = "torch", seed: int = 0) -> None:
        spec = HashGridSpec(
            n_levels=config.n_levels, n_features=config.n_features,
            log2_table_size=config.log2_table_size, base_resolution=config.base_resolution,
            max_resolution=config.max_resolution, n_dims=3)
        super().__init__(spec, config.hidden_dim, config.n_hidden_layers, 1, backend, seed)

    def forward(self, positions: Tensor) -> Tensor:
        """Positions [N, 3] in [0, 1]^3 -> signed distances [N] float32 (unit-cube units)."""
        return self.network(positions.clamp(0.0, 1.0))[:, 0]

    @torch.no_grad()
    def distances(self, positions: Tensor, chunk: int) -> Tensor:
        """:meth:`forward` without a graph, ``chunk`` points at a time. # [N]"""
        out = torch.empty(positions.shape[0], dtype=torch.float32, device=positions.device)
        for start in range(0, positions.shape[0], chunk):
            out[start:start + chunk] = self(positions[start:start + chunk])
        return out
