"""Instant-ngp's occupancy grid: a decaying running maximum of density per cell, in K cascades.

Cell convention: cascade k (0 <= k < K) covers the cube [0.5 - 2^(k-1), 0.5 + 2^(k-1)]^3 (cascade
0 is the unit cube) with ``res^3`` cells; cell (k, ix, iy, iz) covers
``((i + [0, 1)) / res - 0.5) * 2^k + 0.5`` per axis. Per-cell buffers are flat with the linear
index ``((k * res + ix) * res + iy) * res + iz`` (C order). With one cascade (K = 1, every scene
of aabb_scale 1) ``bitfield`` is [res, res, res], indexed ``[ix, iy, iz]``; with K > 1 it is
[K, res, res, res]; both are what :func:`nerfmine.ops.march.march_rays` expects.

Cascades follow instant-ngp (testbed_nerf.cu): K = 1 + ceil(log2(aabb_scale)), at most 8; every
cascade is updated like the single grid (same threshold, in density units of the finest step);
then each cascade's bitfield is OR-ed with the 2x2x2 max-pool of the next finer cascade's bitfield
in the central half it covers, so a coarse cell is never empty where a finer one is occupied.
K x res^3 bits plus two float/bool buffers: at res 128, 2 MiB of bitfield and 8 MiB of density
per cascade, negligible beside a training step.

Initial state: ``density`` is 0 and ``bitfield`` is True in every visible cell, so marching
before the first update (which happens at step 0) samples the whole cube.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from nerfmine.ops.cell_points import cell_points
from nerfmine.ops.scene_box import MAX_CASCADES, aabb_bounds, cascades_for_aabb_scale


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
    cascades: int | None = None
    """Cascades K, each of resolution^3 cells, cascade k covering [0.5 - 2^(k-1), 0.5 + 2^(k-1)]^3.
    None: instant-ngp's 1 + ceil(log2(aabb_scale)) (1 for aabb_scale 1); a run records the value
    it used. More than needed is allowed (at most 8), fewer cannot cover the scene's box."""


class OccupancyGrid(nn.Module):
    """Occupancy grid state (buffers, so it checkpoints) and its update rule.

    Buffers: ``density`` [res^3] float32 (decayed running max of the density sigma, not
    multiplied by the step), ``bitfield`` [res, res, res] bool (occupied cells, for marching),
    ``visible`` [res^3] bool (cells some training camera sees; invisible cells stay empty).
    """

    def __init__(self, config: OccupancyConfig | None = None, aabb_scale: float = 1.0) -> None:
        super().__init__()
        self.config = config if config is not None else OccupancyConfig()
        res = self.config.resolution
        needed = cascades_for_aabb_scale(aabb_scale)
        k = self.config.cascades if self.config.cascades is not None else needed
        if not needed <= k <= MAX_CASCADES:
            raise ValueError(f"occupancy cascades {k}: aabb_scale {aabb_scale:g} needs at least "
                             f"{needed} (and at most {MAX_CASCADES})")
        if k > 1 and res % 4:
            raise ValueError(f"occupancy resolution {res}: cascades need a multiple of 4")
        self.n_cascades = k
        self.aabb_scale = float(aabb_scale)
        shape = (res, res, res) if k == 1 else (k, res, res, res)
        self.register_buffer("density", torch.zeros(k * res**3))
        self.register_buffer("bitfield", torch.ones(shape, dtype=torch.bool))
        self.register_buffer("visible", torch.ones(k * res**3, dtype=torch.bool))

    @property
    def resolution(self) -> int:
        return self.config.resolution

    @property
    def n_cells(self) -> int:
        """Cells of all cascades, K * res^3."""
        return self.n_cascades * self.resolution**3

    def should_update(self, step: int) -> bool:
        """True on the steps the training loop should call :meth:`update`."""
        return step % self.config.update_interval == 0

    def set_visible(self, mask: Tensor) -> None:
        """Mark the cells training cameras see ([K * res^3] bool); others are emptied now, and so
        are cells of coarse cascades that lie wholly outside the scene's box (never marched)."""
        mask = mask.to(device=self.visible.device, dtype=torch.bool).reshape(self.n_cells)
        mask = mask & self._cells_in_aabb()
        self.visible.copy_(mask)
        self.density.mul_(mask)
        self.bitfield.logical_and_(mask.view(self.bitfield.shape))

    def _cells_in_aabb(self) -> Tensor:
        """[K * res^3] bool: the cell overlaps the box 0.5 +- aabb_scale / 2. All True for K = 1
        and aabb_scale >= 1."""
        lo, hi = aabb_bounds(self.aabb_scale)
        index = torch.arange(self.n_cells, device=self.density.device)
        cell_lo = self._positions(index, torch.zeros(self.n_cells, 3, device=index.device))
        cell_hi = self._positions(index, torch.ones(self.n_cells, 3, device=index.device))
        return ((cell_hi > lo) & (cell_lo < hi)).all(dim=-1)

    def _positions(self, index: Tensor, offsets: Tensor) -> Tensor:
        """Points at ``offsets`` in [0, 1)^3 inside cells ``index`` (any cascade). # [N, 3]"""
        return cell_points(index, offsets, self.n_cascades, self.resolution)

    def cell_centers(self) -> Tensor:
        """Centres of all cells (every cascade) in linear-index order. # [K * res^3, 3]"""
        index = torch.arange(self.n_cells, device=self.density.device)
        return self._positions(index, torch.full((self.n_cells, 3), 0.5, device=index.device))

    def _cells_to_update(self, step: int, generator: torch.Generator | None) -> Tensor | None:
        """Linear indices of the cells re-evaluated at ``step``, a static count (int32); None
        during the warm-up, when every cell is (without materialising their indices)."""
        n_cells = self.n_cells
        device = self.density.device
        if step < self.config.warmup_steps:
            return None
        quarter = n_cells // 4
        uniform = torch.randint(0, n_cells, (quarter,), generator=generator, device=device,
                                dtype=torch.int32)
        # Draw uniformly among occupied cells without reading their count on the host: pick a
        # rank in [0, n_occupied) and find the cell of that rank through the running count.
        occupied = self.bitfield.reshape(-1)  # [res^3]
        running = occupied.to(torch.int32).cumsum(0, dtype=torch.int32)  # [res^3]
        n_occupied = running[-1]  # []
        u = torch.rand(quarter, generator=generator, device=device)  # [N/4]
        rank = (u * n_occupied).to(torch.int32).clamp_max(n_cells - 1)  # [N/4]
        from_occupied = torch.searchsorted(running, rank, right=True, out_int32=True)
        from_occupied.clamp_max_(n_cells - 1)
        # With no occupied cell the draw falls back to a second uniform quarter.
        fallback = torch.randint(0, n_cells, (quarter,), generator=generator, device=device,
                                 dtype=torch.int32)
        from_occupied = torch.where(n_occupied > 0, from_occupied, fallback)  # [N/4]
        return torch.cat([uniform, from_occupied])  # [N]

    @torch.no_grad()
    def update(
        self, step: int, density_fn: Callable[[Tensor], Tensor],
        generator: torch.Generator | None = None, backend: str = "torch",
    ) -> None:
        """Decay every cell, then raise updated cells to a fresh density sample; refresh bitfield.

        ``density_fn`` maps [N, 3] positions (unit-cube coordinates, outside [0, 1] in coarse
        cascades) to [N] densities sigma (>= 0); it is called under ``torch.no_grad`` on chunks
        of at most ``chunk_size`` points, at one uniformly random position inside each updated
        cell. No host synchronisation, and shapes that depend only on whether ``step`` is in the
        warm-up, so the update can be captured as a CUDA graph (``generator`` None then: the
        default generator, whose draws graphs advance on each replay). ``backend`` computes the
        query points (:func:`nerfmine.ops.cell_points.cell_points`).

        The whole update works chunk by chunk (cell indices, random offsets, positions and
        densities of one chunk at a time) and finishes in place, so that what it allocates
        beyond the grid's buffers is one [K * res^3] float buffer, the cells drawn (after the
        warm-up) and one chunk's intermediates: it must not set the training run's memory peak
        (with whole-grid temporaries it did for mining: BENCHMARKS.md).

        Every cascade uses the same threshold (instant-ngp splats the optical thickness of the
        finest step, whatever the cascade), and the mean that may lower it is cascade 0's.
        """
        cfg = self.config
        res = self.resolution
        device = self.density.device
        cells = self._cells_to_update(step, generator)  # [N] int32, or None: every cell
        count = self.n_cells if cells is None else cells.shape[0]
        # A cell drawn twice keeps the larger sample; cells not drawn get 0 and just decay.
        new = torch.zeros_like(self.density)  # [K * res^3]
        for lo in range(0, count, cfg.chunk_size):
            hi = min(lo + cfg.chunk_size, count)
            chunk = None if cells is None else cells[lo:hi]  # [C] int32; None: lo .. hi - 1
            offsets = torch.rand(hi - lo, 3, generator=generator, device=device)  # [C, 3]
            points = cell_points(chunk, offsets, self.n_cascades, res, start=lo,
                                 backend=backend)  # [C, 3]
            fresh = density_fn(points).reshape(-1).float()  # [C]
            # Densities are >= 0 and the float32 bit patterns of non-negative numbers order like
            # int32s: an integer max (a native atomic) is the float max, where a float amax is a
            # compare-and-swap loop. (A negative sample loses to the 0 in ``new`` either way.)
            target = (torch.arange(lo, hi, device=device) if chunk is None
                      else chunk.long())  # [C]
            new.view(torch.int32).scatter_reduce_(0, target, fresh.view(torch.int32),
                                                  reduce="amax")
        density = self.density.mul_(cfg.decay)
        torch.maximum(density, new, out=density)
        density.mul_(self.visible)  # [K * res^3]; cells no camera sees stay 0
        # Occupied: sigma * step > min(threshold, mean optical thickness of cascade 0).
        limit = torch.clamp(density[: res**3].mean(), max=cfg.threshold / cfg.step_size)  # []
        occupied = density > limit  # [K * res^3]
        if self.n_cascades > 1:
            occupied = _pool_into_coarser(occupied.view(self.n_cascades, res, res, res))
        self.bitfield.copy_(occupied.view(self.bitfield.shape))


def _pool_into_coarser(bits: Tensor) -> Tensor:
    """instant-ngp's ``bitfield_max_pool``: cascade k's central half (cells res/4 .. 3res/4 per
    axis, the region cascade k-1 covers) is OR-ed with the 2x2x2 max-pool of cascade k-1's
    (already pooled) bits, for k = 1 .. K-1. # [K, res, res, res] bool"""
    n, res = bits.shape[0], bits.shape[1]
    h, q = res // 2, res // 4
    levels = [bits[0]]
    for k in range(1, n):
        pooled = levels[-1].view(h, 2, h, 2, h, 2).any(dim=5).any(dim=3).any(dim=1)  # [h, h, h]
        level = bits[k].clone()
        level[q:q + h, q:q + h, q:q + h] |= pooled
        levels.append(level)
    return torch.stack(levels)


def occupied_cell_boxes(bitfield: Tensor) -> tuple[Tensor, Tensor]:
    """Occupied cells as boxes in unit-cube coordinates: corners lo [N, 3] float32 and edge
    lengths [N] float32, for a [res, res, res] or [K, res, res, res] bitfield.

    A coarse cascade's cells inside the region of the next finer cascade are left out (their
    bits are the max-pool of the finer cells, which describe the same space more tightly)."""
    bits = bitfield if bitfield.dim() == 4 else bitfield[None]
    n, res = bits.shape[0], bits.shape[1]
    keep = bits.clone()
    h, q = res // 2, res // 4
    for k in range(1, n):
        keep[k, q:q + h, q:q + h, q:q + h] = False
    idx = torch.nonzero(keep)  # [N, 4]
    level = idx[:, 0]
    scale = torch.ldexp(torch.ones(idx.shape[0], device=idx.device), level)  # [N], 2^k
    lo = (idx[:, 1:].float() / res - 0.5) * scale[:, None] + 0.5  # [N, 3]
    return lo, scale / res


def grid_extent(bitfield: Tensor) -> tuple[float, float]:
    """Per-axis extent of the coarsest cascade of a bitfield (the unit cube for one cascade)."""
    n = bitfield.shape[0] if bitfield.dim() == 4 else 1
    half = 0.5 * 2.0 ** (n - 1)
    return 0.5 - half, 0.5 + half
