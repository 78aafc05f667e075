"""Triton points inside occupancy cells vs the PyTorch reference nerfmine.ops.cell_points."""

from __future__ import annotations

import pytest
import torch

from nerfmine.occupancy import OccupancyConfig, OccupancyGrid
from nerfmine.ops.cell_points import cell_points

pytestmark = pytest.mark.interpreter


@pytest.mark.parametrize("n_cascades,res", [(1, 8), (3, 12), (8, 4), (2, 128)])
@pytest.mark.parametrize("n", [1, 7, 513, 1500])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_drawn_cells_match_the_reference_bit_for_bit(device, n_cascades, res, n, dtype):
    g = torch.Generator().manual_seed(n * 31 + res)
    cells = torch.randint(0, n_cascades * res**3, (n,), generator=g, dtype=dtype)
    cells[0] = n_cascades * res**3 - 1  # the last cell of the coarsest cascade
    offsets = torch.rand(n, 3, generator=g)
    offsets[-1] = torch.tensor([0.0, 0.5, 1.0 - 2**-24])  # the cell's corner and far side
    out = cell_points(cells.to(device), offsets.to(device), n_cascades, res, backend="triton")
    ref = cell_points(cells, offsets, n_cascades, res, backend="torch")
    assert out.shape == (n, 3) and out.dtype == torch.float32
    assert torch.equal(out.cpu(), ref)


@pytest.mark.parametrize("start", [0, 5, 1000])
def test_consecutive_cells_match_the_reference(device, start):
    offsets = torch.rand(777, 3, generator=torch.Generator().manual_seed(start))
    out = cell_points(None, offsets.to(device), 3, 8, start=start, backend="triton")
    ref = cell_points(None, offsets, 3, 8, start=start, backend="torch")
    cells = torch.arange(start, start + 777)
    assert torch.equal(out.cpu(), ref)
    assert torch.equal(ref, cell_points(cells, offsets, 3, 8))


def test_reference_cell_convention():
    """Cell (k, ix, iy, iz) spans ((i + [0, 1)) / res - 0.5) * 2^k + 0.5 per axis."""
    res = 4
    cell = ((2 * res + 1) * res + 2) * res + 3  # cascade 2, (1, 2, 3)
    p = cell_points(torch.tensor([cell]), torch.tensor([[0.5, 0.0, 0.25]]), 3, res)
    expected = (torch.tensor([1.5, 2.0, 3.25]) / res - 0.5) * 4 + 0.5
    assert torch.equal(p[0], expected)


def test_bad_offsets_are_refused():
    with pytest.raises(ValueError, match=r"offsets must be \[C, 3\] float32"):
        cell_points(None, torch.rand(4, 2), 1, 8)
    with pytest.raises(ValueError, match="3 cells for 4 offsets"):
        cell_points(torch.arange(3), torch.rand(4, 3), 1, 8)


@pytest.mark.parametrize("step", [0, 300])
def test_update_with_triton_points_equals_the_reference(device, step):
    """The occupancy update gives the same grid whichever backend computes its points."""

    def density(p):
        return (20.0 * p[:, 0] * (1.0 + p[:, 1]) + 3.0 * p[:, 2]).clamp_min(0.0)

    grids = []
    for backend in ("torch", "triton"):
        grid = OccupancyGrid(OccupancyConfig(resolution=8, chunk_size=300), aabb_scale=4.0)
        grid = grid.to(device)
        grid.update(0, density, torch.Generator(device).manual_seed(1), backend=backend)
        grid.update(step, density, torch.Generator(device).manual_seed(2), backend=backend)
        grids.append(grid)
    assert torch.equal(grids[0].density, grids[1].density)
    assert torch.equal(grids[0].bitfield, grids[1].bitfield)
    assert grids[0].bitfield.any() and not grids[0].bitfield.all()
