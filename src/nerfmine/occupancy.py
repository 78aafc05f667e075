"""Instant-ngp's occupancy grid: a decaying running maximum of density per cell of the unit cube.

Cell convention: the unit cube is divided into ``res^3`` cells; cell (ix, iy, iz) covers
[ix, ix+1) x [iy, iy+1) x [iz, iz+1) / res. Per-cell buffers are flat with the linear index
``(ix * res + iy) * res + iz`` (C order), so ``bitfield`` [res, res, res] is ``density`` reshaped
and is indexed ``[ix, iy, iz]``, as :func:`nerfmine.ops.march.march_rays` expects.

Initial state: ``density`` is 0 and ``bitfield`` is True in every visible cell, so marching
before the first update (which happens at step 0) samples the whole cube.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class OccupancyConfig:
    """Occupancy grid hyperparameters; defaults are instant-ngp's for synthetic scenes."""

    resolution: int = 128
    """Cells per axis (one cascade of 128^3, instant-ngp.md)."""
    update_interval: int = 16
    """Steps between updates (torch-ngp / nerfacc schedule: every 16 steps from step 0)."""
    decay: float = 0.95
    """Every cell's density is multiplied by this at each update before the new maximum."""
    warmup_steps: int = 256
    """Before this step every cell is re-evaluated; afterwards a quarter at random plus a quarter
    drawn from occupied cells."""
    threshold: float = 0.01
    """Minimum optical thickness density * step_size of an occupied cell (lowered to the grid's
    mean optical thickness when that is smaller)."""
    step_size: float = math.sqrt(3.0) / 1024.0
    """Marching step the threshold refers to (sqrt(3)/1024 of the unit cube)."""
    chunk_size: int = 2**16
    """Points per density evaluation during an update, so the update never sets the memory peak
    (with 2^18 it did: the same peak for mining and the baseline)."""


class OccupancyGrid(nn.Module):
    """Occupancy grid state (buffers, so it checkpoints) and its update rule.

    Buffers: ``density`` [res^3] float32 (decayed running max of the density sigma, not
    multiplied by the step), ``bitfield`` [res, res, res] bool (occupied cells, for marching),
    ``visible`` [res^3] bool (cells some training camera sees; invisible cells stay empty).
    """

    def __init__(self, config: OccupancyConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else OccupancyConfig()
        res = self.config.resolution
        self.register_buffer("density", torch.zeros(res**3))
        self.register_buffer("bitfield", torch.ones(res, res, res, dtype=torch.bool))
        self.register_buffer("visible", torch.ones(res**3, dtype=torch.bool))

    @property
    def resolution(self) -> int:
        return self.config.resolution

    def should_update(self, step: int) -> bool:
        """True on the steps the training loop should call :meth:`update`."""
        return step % self.config.update_interval == 0

    def set_visible(self, mask: Tensor) -> None:
        """Mark the cells training cameras see ([res^3] bool); others are emptied now."""
        res = self.resolution
        mask = mask.to(device=self.visible.device, dtype=torch.bool).reshape(res**3)
        self.visible.copy_(mask)
        self.density.mul_(mask)
        self.bitfield.logical_and_(mask.view(res, res, res))

    def _cell_coords(self, index: Tensor) -> Tensor:
        """Integer (ix, iy, iz) of linear cell indices. # [N, 3] int64"""
        res = self.resolution
        return torch.stack([index // (res * res), (index // res) % res, index % res], dim=-1)

    def cell_centers(self) -> Tensor:
        """Centres of all cells in linear-index order. # [res^3, 3]"""
        index = torch.arange(self.resolution**3, device=self.density.device)
        return (self._cell_coords(index).float() + 0.5) / self.resolution

    def _cells_to_update(self, step: int, generator: torch.Generator) -> Tensor:
        """Linear indices of the cells re-evaluated at ``step``, a static count. # [N] int64"""
        n_cells = self.resolution**3
        device = self.density.device
        if step < self.config.warmup_steps:
            return torch.arange(n_cells, device=device)
        quarter = n_cells // 4
        uniform = torch.randint(0, n_cells, (quarter,), generator=generator, device=device)
        # Draw uniformly among occupied cells without reading their count on the host: pick a
        # rank in [0, n_occupied) and find the cell of that rank through the running count.
        occupied = self.bitfield.reshape(-1)  # [res^3]
        running = occupied.long().cumsum(0)  # [res^3]
        n_occupied = running[-1]  # []
        u = torch.rand(quarter, generator=generator, device=device)  # [N/4]
        rank = (u * n_occupied).long().clamp_max(n_cells - 1)  # [N/4]
        from_occupied = torch.searchsorted(running, rank, right=True).clamp_max(n_cells - 1)
        # With no occupied cell the draw falls back to a second uniform quarter.
        fallback = torch.randint(0, n_cells, (quarter,), generator=generator, device=device)
        from_occupied = torch.where(n_occupied > 0, from_occupied, fallback)  # [N/4]
        return torch.cat([uniform, from_occupied])  # [N]

    @torch.no_grad()
    def update(
        self, step: int, density_fn: Callable[[Tensor], Tensor], generator: torch.Generator
    ) -> None:
        """Decay every cell, then raise updated cells to a fresh density sample; refresh bitfield.

        ``density_fn`` maps [N, 3] unit-cube positions to [N] densities sigma (>= 0); it is
        called under ``torch.no_grad`` on chunks of at most ``chunk_size`` points, at one
        uniformly random position inside each updated cell. No host synchronisation.
        """
        cfg = self.config
        res = self.resolution
        cells = self._cells_to_update(step, generator)  # [N]
        offsets = torch.rand(
            cells.shape[0], 3, generator=generator, device=self.density.device
        )  # [N, 3]
        positions = (self._cell_coords(cells).float() + offsets) / res  # [N, 3]
        fresh = torch.cat(
            [
                density_fn(positions[lo : lo + cfg.chunk_size]).reshape(-1).float()
                for lo in range(0, positions.shape[0], cfg.chunk_size)
            ]
        )  # [N]
        # A cell drawn twice keeps the larger sample; cells not drawn get 0 and just decay.
        new = torch.zeros_like(self.density).scatter_reduce_(0, cells, fresh, reduce="amax")
        density = torch.maximum(self.density * cfg.decay, new)  # [res^3]
        density = torch.where(self.visible, density, 0.0)  # [res^3]
        self.density.copy_(density)
        # Occupied: sigma * step > min(threshold, mean optical thickness).
        limit = torch.clamp(density.mean(), max=cfg.threshold / cfg.step_size)  # []
        self.bitfield.copy_((density > limit).view(res, res, res))
