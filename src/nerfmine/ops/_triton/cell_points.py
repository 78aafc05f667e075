"""Triton points inside occupancy cells (semantics and reference: :mod:`nerfmine.ops.cell_points`).

One lane per cell: decode the linear index into (cascade, ix, iy, iz), add the offset, divide by
the resolution (rounded to nearest, as the reference's division) and map cascades k > 0 by the
exact power of two 2^k.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_BLOCK = 512


@triton.jit
def _cell_points_kernel(cells_ptr, offsets_ptr, out_ptr, N, start, RES: tl.constexpr,
                        HAS_CELLS: tl.constexpr, MULTI: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    if HAS_CELLS:
        cell = tl.load(cells_ptr + i, mask=mask, other=0).to(tl.int64)
    else:
        cell = start + i
    level = cell // (RES * RES * RES)
    rest = cell - level * (RES * RES * RES)
    ix = rest // (RES * RES)
    iy = (rest // RES) % RES
    iz = rest % RES
    scale = (tl.full((BLOCK,), 1, tl.int64) << level).to(tl.float32)  # 2^k, exact
    for axis in tl.static_range(3):
        if axis == 0:
            c = ix
        elif axis == 1:
            c = iy
        else:
            c = iz
        o = tl.load(offsets_ptr + i * 3 + axis, mask=mask, other=0.0)
        p = tl.div_rn(c.to(tl.float32) + o, tl.full((BLOCK,), RES, tl.float32))
        if MULTI:
            p = tl.where(level > 0, (p - 0.5) * scale + 0.5, p)
        tl.store(out_ptr + i * 3 + axis, p, mask=mask)


def cell_points_triton(cells: Tensor | None, offsets: Tensor, n_cascades: int, res: int,
                       start: int) -> Tensor:
    offsets = offsets.contiguous()
    n = offsets.shape[0]
    out = torch.empty_like(offsets)
    if n == 0:
        return out
    cells_arg = cells.contiguous() if cells is not None else offsets  # unused without cells
    grid = (triton.cdiv(n, _BLOCK),)
    _cell_points_kernel[grid](cells_arg, offsets, out, n, start, RES=res,
                              HAS_CELLS=cells is not None, MULTI=n_cascades > 1, BLOCK=_BLOCK)
    return out
