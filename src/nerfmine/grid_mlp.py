"""The network of the single-task primitives (``nerfmine image``, ``nerfmine sdf``): a
multiresolution hash grid and tiny-cuda-nn's MLP (no biases, ReLU hidden layers, a linear
output). The NeRF field (:mod:`nerfmine.field`) has its own two-MLP layout."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from nerfmine.field import _xavier_uniform
from nerfmine.ops.hash_grid import HashGridSpec, hash_grid_encode, init_hash_table


class GridMLP(nn.Module):
    """Hash grid of ``spec`` -> MLP of ``n_hidden_layers`` x ``hidden_dim`` -> ``out_dim``.
    Parameters: ``table`` [T_all, F] and ``layers`` (the MLP's weight matrices), initialised
    from ``seed`` in that order."""

    def __init__(self, spec: HashGridSpec, hidden_dim: int, n_hidden_layers: int, out_dim: int,
                 backend: str = "torch", seed: int = 0) -> None:
        super().__init__()
        self.backend = backend
        self.spec = spec
        gen = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(init_hash_table(spec, generator=gen))  # [T_all, F]
        widths = [spec.output_dim] + [hidden_dim] * n_hidden_layers + [out_dim]
        self.layers = nn.ParameterList(
            nn.Parameter(_xavier_uniform(out_dim_, in_dim, gen))
            for in_dim, out_dim_ in zip(widths[:-1], widths[1:]))

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.layers)

    def network(self, positions: Tensor) -> Tensor:
        """Positions [N, d] in [0, 1]^d -> outputs [N, out_dim] float32."""
        h = hash_grid_encode(positions, self.table, self.spec, backend=self.backend)
        for i, weight in enumerate(self.layers):
            h = F.linear(h, weight)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h
