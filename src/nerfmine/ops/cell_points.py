"""Points inside occupancy-grid cells: the positions an occupancy update queries.

Cell convention (:mod:`nerfmine.occupancy`): linear index ``((k * res + ix) * res + iy) * res +
iz``; cascade k covers ``0.5 +- 2^(k-1)`` with ``res^3`` cells, and the point at offset ``o`` in
[0, 1)^3 of cell (k, i) is ``(i + o) / res`` in cascade 0 and ``((i + o) / res - 0.5) * 2^k + 0.5``
in cascade k > 0.

The reference is a dozen tensor operators; the Triton kernel does the same arithmetic in one
launch (an update makes up to 2^7 chunks of queries, and on the GPU those operators cost more
than the density query itself). Division by ``res`` is rounded to nearest in both, and the
other operations are exact, so the backends agree bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nerfmine.ops.backends import check_backend, triton_module


def cell_points(cells: Tensor | None, offsets: Tensor, n_cascades: int, res: int,
                start: int = 0, backend: str = "torch") -> Tensor:
    """Points [C, 3] float32 at ``offsets`` [C, 3] float32 inside ``cells`` [C] (int32 or int64
    linear indices of any cascade), or inside cells ``start .. start + C - 1`` when ``cells`` is
    None (the warm-up update, which visits every cell in order)."""
    check_backend("cell_points", backend)
    if offsets.dim() != 2 or offsets.shape[1] != 3 or offsets.dtype != torch.float32:
        raise ValueError(f"cell_points: offsets must be [C, 3] float32, got "
                         f"{list(offsets.shape)} {offsets.dtype}")
    if cells is not None and cells.shape != offsets.shape[:1]:
        raise ValueError(f"cell_points: {cells.shape[0]} cells for {offsets.shape[0]} offsets")
    if backend == "torch":
        return _cell_points_torch(cells, offsets, n_cascades, res, start)
    module = triton_module("cell_points", offsets, *([] if cells is None else [cells]))
    return module.cell_points_triton(cells, offsets, n_cascades, res, start)


def _cell_points_torch(cells: Tensor | None, offsets: Tensor, n_cascades: int, res: int,
                       start: int) -> Tensor:
    index = (cells.long() if cells is not None else
             torch.arange(start, start + offsets.shape[0], device=offsets.device))  # [C]
    coords = torch.stack([(index // (res * res)) % res, (index // res) % res, index % res],
                         dim=-1)  # [C, 3]
    base = (coords.float() + offsets) / res  # [C, 3]
    if n_cascades == 1:
        return base
    level = index // res**3  # [C]
    scale = torch.ldexp(torch.ones_like(base[:, :1]), level[:, None])  # [C, 1], 2^k
    return torch.where(level[:, None] > 0, (base - 0.5) * scale + 0.5, base)
