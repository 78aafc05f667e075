"""OccupancyGrid: the update rule on hand-built density functions, and its index convention."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from nerfmine.occupancy import OccupancyConfig, OccupancyGrid
from nerfmine.ops.march import march_rays

RES = 8
N_CELLS = RES**3
STEP = math.sqrt(3.0) / 1024.0
THRESHOLD_SIGMA = 0.01 / STEP  # ~5.9: density of the default optical-thickness threshold


def _grid(**overrides) -> OccupancyGrid:
    return OccupancyGrid(OccupancyConfig(**{"resolution": RES, **overrides}))


def _cell_of(positions: torch.Tensor) -> torch.Tensor:
    """Linear cell index (ix * res + iy) * res + iz of positions. # [N]"""
    cell = (positions * RES).floor().long()
    assert ((cell >= 0) & (cell < RES)).all()
    return (cell[:, 0] * RES + cell[:, 1]) * RES + cell[:, 2]


class Recorder:
    """Density function that records every point it is asked about."""

    def __init__(self, fn):
        self.fn = fn
        self.points: list[torch.Tensor] = []
        self.grad_enabled: list[bool] = []

    def __call__(self, positions):
        self.points.append(positions.clone())
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.fn(positions)

    @property
    def all_points(self) -> torch.Tensor:
        return torch.cat(self.points)


def _smooth(positions):
    """A density with values both sides of the threshold. # [N]"""
    return 20.0 * positions[:, 0] * (1.0 + positions[:, 1]) + 3.0 * positions[:, 2]


@contextlib.contextmanager
def _no_host_sync():
    """Fail on the Python-level ways of reading device data back to the host."""

    def refuse(*args, **kwargs):
        raise AssertionError("host synchronisation in a no-sync path")

    def getitem(self, index, _orig=torch.Tensor.__getitem__):
        parts = index if isinstance(index, tuple) else (index,)
        if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
            refuse()
        return _orig(self, index)

    with pytest.MonkeyPatch.context() as mp:
        for name in ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__"):
            mp.setattr(torch.Tensor, name, refuse)
        mp.setattr(torch, "nonzero", refuse)
        mp.setattr(torch.Tensor, "__getitem__", getitem)
        yield


def test_initial_state_and_buffers():
    grid = _grid()
    assert grid.density.shape == (N_CELLS,) and (grid.density == 0).all()
    assert grid.bitfield.shape == (RES, RES, RES) and grid.bitfield.all()
    assert grid.visible.shape == (N_CELLS,) and grid.visible.all()
    assert set(grid.state_dict()) == {"density", "bitfield", "visible"}
    default = OccupancyGrid()
    assert default.density.shape == (128**3,)
    assert OccupancyConfig().step_size == STEP


def test_should_update():
    grid = _grid(update_interval=16)
    assert [s for s in range(50) if grid.should_update(s)] == [0, 16, 32, 48]


def test_cell_centers_follow_the_index_convention():
    grid = _grid()
    centers = grid.cell_centers()  # [res^3, 3]
    assert centers.shape == (N_CELLS, 3)
    ix, iy, iz = 5, 2, 7
    torch.testing.assert_close(
        centers[(ix * RES + iy) * RES + iz], torch.tensor([5.5, 2.5, 7.5]) / RES
    )
    assert torch.equal(_cell_of(centers), torch.arange(N_CELLS))


def test_warmup_evaluates_every_cell_once_decay_then_max():
    grid = _grid(decay=0.5)
    g = torch.Generator().manual_seed(0)
    old = torch.rand(N_CELLS, generator=g) * 30.0
    grid.density.copy_(old)
    recorder = Recorder(_smooth)
    grid.update(step=10, density_fn=recorder, generator=torch.Generator().manual_seed(1))
    points = recorder.all_points
    assert points.shape == (N_CELLS, 3)
    cells = _cell_of(points)
    assert torch.equal(
        torch.bincount(cells, minlength=N_CELLS), torch.ones(N_CELLS, dtype=torch.int64)
    )
    fresh = torch.empty(N_CELLS)
    fresh[cells] = _smooth(points)
    expected = torch.maximum(old * 0.5, fresh)
    torch.testing.assert_close(grid.density, expected)
    # Both branches of the max occur.
    assert (old * 0.5 > fresh).any() and (old * 0.5 < fresh).any()
    # The sample positions are random inside cells, not the centres.
    assert (points - grid.cell_centers()[cells]).abs().max() > 0.3 / RES
    assert recorder.grad_enabled == [False]


def test_threshold_uses_the_smaller_of_fixed_and_mean():
    # Mean above the fixed threshold: occupied iff density > 0.01 / step.
    grid = _grid()
    grid.update(
        0, lambda p: 2.0 * THRESHOLD_SIGMA * p[:, 0] * 2.0, torch.Generator().manual_seed(0)
    )
    assert grid.density.mean() > THRESHOLD_SIGMA
    assert torch.equal(grid.bitfield.reshape(-1), grid.density > THRESHOLD_SIGMA)
    assert not grid.bitfield.all() and grid.bitfield.any()

    # Mean below the fixed threshold: occupied iff density > mean.
    grid = _grid()
    grid.update(0, lambda p: 0.5 * THRESHOLD_SIGMA * p[:, 0] ** 3, torch.Generator().manual_seed(0))
    mean = grid.density.mean()
    assert mean < THRESHOLD_SIGMA and (grid.density < THRESHOLD_SIGMA).all()
    assert torch.equal(grid.bitfield.reshape(-1), grid.density > mean)
    assert grid.bitfield.any()

    # A custom threshold and step are honoured.
    grid = _grid(threshold=0.5, step_size=0.1)
    grid.update(0, lambda p: 10.0 * p[:, 0], torch.Generator().manual_seed(0))  # mean ~5 = limit
    assert torch.equal(
        grid.bitfield.reshape(-1), grid.density > torch.clamp(grid.density.mean(), max=5.0)
    )


def test_bitfield_is_density_in_ix_iy_iz_order():
    grid = _grid()
    # Dense only where x < 0.25 and z > 0.5: the bitfield must show it on axes 0 and 2.
    grid.update(0, lambda p: 1e3 * ((p[:, 0] < 0.25) & (p[:, 2] > 0.5)).float(), torch.Generator())
    expected = torch.zeros(RES, RES, RES, dtype=torch.bool)
    expected[: RES // 4, :, RES // 2 :] = True
    assert torch.equal(grid.bitfield, expected)


def test_invisible_cells_stay_empty():
    grid = _grid()
    visible = torch.ones(N_CELLS, dtype=torch.bool)
    visible[::3] = False
    grid.set_visible(visible)
    assert not grid.bitfield.reshape(-1)[~visible].any()  # emptied at once
    for step in (0, 16, 300):
        grid.update(
            step, lambda p: torch.full((p.shape[0],), 1e4), torch.Generator().manual_seed(step)
        )
        assert (grid.density[~visible] == 0).all() and (grid.density[visible] > 0).all()
        assert not grid.bitfield.reshape(-1)[~visible].any()
        assert grid.bitfield.reshape(-1)[visible].all()


def test_after_warmup_touches_a_fixed_number_of_cells():
    grid = _grid(decay=0.9, warmup_steps=256)
    old = torch.rand(N_CELLS, generator=torch.Generator().manual_seed(3)) * 10.0
    grid.density.copy_(old)
    occupied = torch.zeros(N_CELLS, dtype=torch.bool)
    occupied[torch.tensor([3, 77, 200, 301, 500])] = True
    grid.bitfield.copy_(occupied.view(RES, RES, RES))

    recorder = Recorder(lambda p: torch.full((p.shape[0],), 1e3))
    grid.update(step=256, density_fn=recorder, generator=torch.Generator().manual_seed(4))
    points = recorder.all_points
    quarter = N_CELLS // 4
    assert points.shape == (2 * quarter, 3)
    cells = _cell_of(points)
    # The second quarter comes from the occupied cells only, and reaches each of them.
    assert occupied[cells[quarter:]].all()
    assert set(cells[quarter:].tolist()) == {3, 77, 200, 301, 500}
    # The first quarter is uniform: it reaches unoccupied cells too.
    assert (~occupied[cells[:quarter]]).sum() > quarter // 2
    touched = torch.zeros(N_CELLS, dtype=torch.bool)
    touched[cells] = True
    assert (grid.density[touched] == 1e3).all()
    torch.testing.assert_close(grid.density[~touched], old[~touched] * 0.9)


def test_occupied_draws_are_uniform_among_occupied_cells():
    grid = _grid(resolution=16, warmup_steps=0)
    n_cells = 16**3
    occupied = torch.zeros(n_cells, dtype=torch.bool)
    occupied[torch.tensor([10, 2000, 4095])] = True
    grid.bitfield.copy_(occupied.view(16, 16, 16))
    recorder = Recorder(lambda p: torch.zeros(p.shape[0]))
    grid.update(1, recorder, torch.Generator().manual_seed(0))
    points = recorder.all_points[n_cells // 4 :]
    cell = (points * 16).floor().long()
    linear = (cell[:, 0] * 16 + cell[:, 1]) * 16 + cell[:, 2]
    counts = torch.bincount(linear, minlength=n_cells)[torch.tensor([10, 2000, 4095])]
    # 1024 draws over 3 cells: 341 expected each, binomial sd ~15; 6 sd bounds.
    assert counts.sum() == n_cells // 4
    assert ((counts - 341).abs() < 90).all(), counts


def test_no_occupied_cell_falls_back_to_uniform():
    grid = _grid(warmup_steps=0)
    grid.bitfield.zero_()
    recorder = Recorder(lambda p: torch.full((p.shape[0],), 1e3))
    grid.update(5, recorder, torch.Generator().manual_seed(0))
    cells = _cell_of(recorder.all_points)
    assert cells.shape == (2 * (N_CELLS // 4),)
    assert len(set(cells.tolist())) > N_CELLS // 4
    assert grid.bitfield.any()


@pytest.mark.parametrize("step", [0, 300])
def test_chunked_equals_unchunked(step):
    results = []
    for chunk_size in (7, 2**18):
        grid = _grid(chunk_size=chunk_size)
        grid.update(0, _smooth, torch.Generator().manual_seed(10))
        recorder = Recorder(_smooth)
        grid.update(step, recorder, torch.Generator().manual_seed(11))
        assert max(p.shape[0] for p in recorder.points) <= chunk_size
        results.append((grid.density.clone(), grid.bitfield.clone(), recorder.all_points))
    (d1, b1, p1), (d2, b2, p2) = results
    assert torch.equal(p1, p2) and torch.equal(d1, d2) and torch.equal(b1, b2)
    assert len(p1) > 7


@pytest.mark.parametrize("step", [0, 300])
def test_update_without_generator_draws_from_the_default_one(step):
    """A captured update (CUDA graphs) passes no generator: it draws the default generator's
    stream, and so advances it, exactly as the same generator passed explicitly would."""
    results = []
    for explicit in (True, False):
        grid = _grid()
        grid.update(0, _smooth, torch.Generator().manual_seed(10))
        torch.manual_seed(11)
        grid.update(step, _smooth, torch.Generator().manual_seed(11) if explicit else None)
        results.append((grid.density.clone(), grid.bitfield.clone(), torch.rand(3)))
    (d1, b1, r1), (d2, b2, r2) = results
    assert torch.equal(d1, d2) and torch.equal(b1, b2)
    assert not torch.equal(r1, r2)  # only the default-generator update advanced the stream


@pytest.mark.skipif(not torch.cuda.is_available(), reason="capturing a CUDA graph needs a GPU")
@pytest.mark.parametrize("step", [0, 300])
def test_captured_update_replays_the_eager_update(step):
    """The training step captures the update as a CUDA graph (TrainStep._update_occupancy): a
    replay does what the eager update does from the same state of the default generator."""
    from nerfmine.graphs import StepGraphs

    device = torch.device("cuda")
    captured, eager = (_grid(chunk_size=100).to(device) for _ in range(2))
    for grid in (captured, eager):
        grid.update(0, _smooth, torch.Generator(device).manual_seed(10))
    graphs = StepGraphs(device)
    for seed in (5, 6):  # the first run is eager (and captures), the second a replay
        torch.cuda.manual_seed(seed)
        graphs.run("update", lambda capturing: captured.update(step, _smooth))
        torch.cuda.manual_seed(seed)
        eager.update(step, _smooth)
        torch.cuda.synchronize()
        assert torch.equal(captured.density, eager.density)
        assert torch.equal(captured.bitfield, eager.bitfield)
    assert graphs.stats() == {"captures": 1, "replays": 1, "disabled_reason": None}


def test_update_without_host_sync():
    grid = _grid()
    grid.update(0, _smooth, torch.Generator().manual_seed(0))
    with _no_host_sync():
        grid.update(400, _smooth, torch.Generator().manual_seed(1))
        grid.update(16, _smooth, torch.Generator().manual_seed(2))


def test_marching_sees_only_dense_cells():
    grid = _grid()
    dense = lambda p: 1e3 * (((p - 0.5).abs() < 0.25).all(dim=1)).float()  # noqa: E731
    grid.update(0, dense, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    origins = torch.rand(13, 3, generator=g) * 0.4 + torch.tensor([0.3, 0.3, -0.5])
    directions = torch.tensor([0.0, 0.0, 1.0]).expand(13, 3)
    samples = march_rays(origins, directions, grid.bitfield, step_size=0.01, max_steps=200)
    assert samples.capacity > 0
    assert (dense(samples.positions) > 0).all()
