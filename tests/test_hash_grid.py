"""Hash-grid encoding: geometry, hand-computed lookups, a naive oracle, gradients, edge cases."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from nerfmine.errors import NerfmineError
from nerfmine.ops.hash_grid import (
    HashGridSpec,
    _hash_grid_encode_torch,
    hash_grid_encode,
    hash_grid_indices_and_weights,
    init_hash_table,
)

P1, P2 = 2654435761, 805459861

# 4 levels, T = 2^10, resolutions 4, 11, 26, 64: level 0 dense, levels 1-3 hashed.
SMALL = HashGridSpec(n_levels=4, n_features=2, log2_table_size=10, base_resolution=4,
                     max_resolution=64)
# 3 levels, T = 64, resolutions 2, 4, 8: levels 0-1 dense, level 2 hashed. For gradcheck.
TINY = HashGridSpec(n_levels=3, n_features=2, log2_table_size=6, base_resolution=2,
                    max_resolution=8)


def _random_table(spec: HashGridSpec, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(spec.n_entries, spec.n_features, generator=g, dtype=torch.float64) * 2 - 1
            ).to(dtype)


def _naive_corners(point, spec: HashGridSpec, level: int):
    """(global row, weight) of the 8 corners, one Python loop per corner, float32 positions."""
    scale = np.float32(spec.scales[level])
    res, size, offset = spec.resolutions[level], spec.level_sizes[level], spec.level_offsets[level]
    pos = [np.float32(c) * scale + np.float32(0.5) for c in point]
    cell = [int(math.floor(p)) for p in pos]
    frac = [float(p - np.float32(c)) for p, c in zip(pos, cell, strict=True)]
    corners = []
    for k in range(8):
        bits = [(k >> d) & 1 for d in range(3)]
        c = [cell[d] + bits[d] for d in range(3)]
        if spec.dense_levels[level]:
            index = c[0] + c[1] * res + c[2] * res * res
        else:
            index = (c[0] * 1) ^ (c[1] * P1) ^ (c[2] * P2)
        index = (index & 0xFFFFFFFF) % size + offset
        weight = 1.0
        for d in range(3):
            weight *= frac[d] if bits[d] else 1.0 - frac[d]
        corners.append((index, weight))
    return corners


def _naive_encode(points: np.ndarray, table: np.ndarray, spec: HashGridSpec) -> np.ndarray:
    out = np.zeros((len(points), spec.output_dim))
    for i, point in enumerate(points):
        for level in range(spec.n_levels):
            for index, weight in _naive_corners(point, spec, level):
                out[i, level * spec.n_features : (level + 1) * spec.n_features] += (
                    weight * table[index]
                )
    return out


# --- the spec ---------------------------------------------------------------------------------


def test_default_spec_geometry():
    spec = HashGridSpec()
    assert spec.resolutions[:6] == (16, 23, 31, 43, 59, 81)
    assert spec.resolutions[-1] == 2048
    assert spec.dense_levels == (True,) * 5 + (False,) * 11
    assert 2**spec.log2_per_level_scale == pytest.approx(1.3819, abs=1e-4)
    assert all(size % 8 == 0 for size in spec.level_sizes)
    assert spec.level_sizes[0] == 16**3 and spec.level_sizes[5:] == (2**19,) * 11
    assert spec.n_entries == 6098120
    assert spec.level_offsets[0] == 0 and spec.level_offsets[-1] == spec.n_entries
    assert spec.output_dim == 32
    assert spec.scales[0] == 15.0


def test_small_specs_have_dense_and_hashed_levels():
    assert SMALL.resolutions == (4, 11, 26, 64)
    assert SMALL.dense_levels == (True, False, False, False)
    assert TINY.resolutions == (2, 4, 8)
    assert TINY.dense_levels == (True, True, False)


# --- hand-computed lookups --------------------------------------------------------------------


def test_dense_level_by_hand():
    spec = HashGridSpec()
    # Level 0: scale 15, res 16. pos = x * 15 + 0.5 = (4.25, 6.125, 12.6875), all exact in binary.
    x = torch.tensor([[0.25, 0.375, 0.8125]])
    indices, weights = hash_grid_indices_and_weights(x, spec, 0)
    # cell (4, 6, 12): base row 4 + 6*16 + 12*256 = 3172; +1 along x, +16 along y, +256 along z.
    assert indices.tolist() == [[3172, 3173, 3188, 3189, 3428, 3429, 3444, 3445]]
    fx, fy, fz = 0.25, 0.125, 0.6875
    expected = [
        (1 - fx) * (1 - fy) * (1 - fz), fx * (1 - fy) * (1 - fz),
        (1 - fx) * fy * (1 - fz), fx * fy * (1 - fz),
        (1 - fx) * (1 - fy) * fz, fx * (1 - fy) * fz,
        (1 - fx) * fy * fz, fx * fy * fz,
    ]
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights[0], torch.tensor(expected), rtol=0, atol=1e-7)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)


def test_dense_level_wraps_past_the_last_vertex():
    # At x = 1, pos = 15.5 and the +1 corner is vertex 16 = res: tcnn indexes it densely and
    # takes the result mod the level size, so it aliases to a valid row (weight 0.5 along x).
    spec = HashGridSpec()
    indices, _ = hash_grid_indices_and_weights(torch.tensor([[1.0, 1.0, 1.0]]), spec, 0)
    assert indices[0, 7].item() == (16 + 16 * 16 + 16 * 256) % 4096


@pytest.mark.parametrize("level", [5, 9, 15])
def test_hashed_level_by_hand(level):
    spec = HashGridSpec()
    point = (0.5, 0.25, 0.75)
    scale = np.float32(spec.scales[level])
    cell = [int(math.floor(np.float32(c) * scale + np.float32(0.5))) for c in point]
    size, offset = spec.level_sizes[level], spec.level_offsets[level]
    expected = []
    for k in range(8):
        a, b, c = (cell[d] + ((k >> d) & 1) for d in range(3))
        expected.append((((a * 1) ^ (b * P1) ^ (c * P2)) & 0xFFFFFFFF) % size + offset)
    indices, weights = hash_grid_indices_and_weights(torch.tensor([point]), spec, level)
    assert indices.tolist() == [expected]
    assert indices.dtype == torch.int64
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)


# --- the encoding -----------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [SMALL, TINY], ids=["small", "tiny"])
def test_encode_matches_naive_loop(spec):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(9, 3, generator=g)
    table = _random_table(spec)
    out = hash_grid_encode(x, table, spec)
    assert out.shape == (9, spec.output_dim) and out.dtype == torch.float32
    expected = _naive_encode(x.numpy(), table.double().numpy(), spec)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-6)


def test_output_is_level_major():
    table = torch.zeros(SMALL.n_entries, 2)
    lo, hi = SMALL.level_offsets[2], SMALL.level_offsets[3]
    table[lo:hi, 0] = 1.0
    table[lo:hi, 1] = 2.0
    out = hash_grid_encode(torch.rand(5, 3), table, SMALL)
    expected = torch.zeros(5, 8)
    expected[:, 4], expected[:, 5] = 1.0, 2.0  # level 2 -> columns 4, 5
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_fp16_table_is_upcast():
    table = _random_table(SMALL, dtype=torch.float16)
    x = torch.rand(17, 3)
    out = hash_grid_encode(x, table, SMALL)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, hash_grid_encode(x, table.float(), SMALL))


def test_empty_batch():
    out = hash_grid_encode(torch.zeros(0, 3), _random_table(TINY), TINY)
    assert out.shape == (0, TINY.output_dim)


# --- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 7, 13])
def test_gradcheck_table(n):
    g = torch.Generator().manual_seed(n)
    x = torch.rand(n, 3, generator=g, dtype=torch.float64)
    table = _random_table(TINY, seed=n, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _hash_grid_encode_torch(x, t, TINY), (table,))


def test_gradient_is_weight_scatter():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(11, 3, generator=g)
    upstream = torch.randn(11, SMALL.output_dim, generator=g)
    table = _random_table(SMALL).requires_grad_(True)
    (hash_grid_encode(x, table, SMALL) * upstream).sum().backward()

    expected = np.zeros((SMALL.n_entries, SMALL.n_features))
    f = SMALL.n_features
    for i, point in enumerate(x.numpy()):
        for level in range(SMALL.n_levels):
            for index, weight in _naive_corners(point, SMALL, level):
                g_level = upstream[i, level * f : (level + 1) * f].double().numpy()
                expected[index] += weight * g_level
    assert table.grad.dtype == torch.float32
    np.testing.assert_allclose(table.grad.numpy(), expected, rtol=0, atol=1e-5)
    # Rows no point touches get exactly zero (sparse Adam relies on it).
    assert (table.grad.abs().sum(1) > 0).sum() <= 11 * 8 * SMALL.n_levels


def test_x_gets_no_gradient():
    x = torch.rand(4, 3, requires_grad=True)
    table = _random_table(TINY).requires_grad_(True)
    hash_grid_encode(x, table, TINY).sum().backward()
    assert x.grad is None and table.grad is not None


def test_fp16_table_gradient_dtype():
    table = _random_table(TINY, dtype=torch.float16).requires_grad_(True)
    hash_grid_encode(torch.rand(6, 3), table, TINY).sum().backward()
    assert table.grad.dtype == torch.float16


# --- edges and boundaries ---------------------------------------------------------------------


def _boundary_points(spec: HashGridSpec) -> torch.Tensor:
    """Cube corners, face centres, and points whose position is an integer at some level."""
    pts = [[float(a), float(b), float(c)] for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    pts += [[0.0, 0.5, 1.0], [1.0, 0.0, 0.5], [0.5, 0.5, 0.5]]
    for s in spec.scales:
        for k in (1, int(s) // 2, int(math.ceil(s))):
            u = (k - 0.5) / s  # pos = k exactly (up to float32 rounding)
            if 0.0 <= u <= 1.0:
                pts += [[u, u, u], [u, 0.0, 1.0], [1.0, u, 0.0]]
    return torch.tensor(pts, dtype=torch.float32)


@pytest.mark.parametrize("spec", [HashGridSpec(), SMALL, TINY], ids=["default", "small", "tiny"])
def test_boundary_points_stay_in_range(spec):
    x = _boundary_points(spec)
    for level in range(spec.n_levels):
        indices, weights = hash_grid_indices_and_weights(x, spec, level)
        assert indices.min() >= spec.level_offsets[level]
        assert indices.max() < spec.level_offsets[level + 1]
        assert weights.min() >= 0 and weights.max() <= 1
        torch.testing.assert_close(weights.sum(1), torch.ones(len(x)))
    out = hash_grid_encode(x, init_hash_table(spec), spec)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_continuous_across_cell_boundaries(dim):
    spec = SMALL
    table = _random_table(spec)  # entries in [-1, 1]
    eps = 1e-5
    base = torch.tensor([0.37, 0.61, 0.23])
    for level, s in enumerate(spec.scales):
        for k in (1, 2, int(s) // 2):
            x0 = base.clone()
            x0[dim] = (k - 0.5) / s  # a cell boundary of this level along `dim`
            lo, hi = x0.clone(), x0.clone()
            lo[dim] -= eps
            hi[dim] += eps
            cells = [hash_grid_indices_and_weights(p[None], spec, level)[0][0, 0] for p in (lo, hi)]
            assert cells[0] != cells[1]  # the two sides really are in different cells
            out = hash_grid_encode(torch.stack([lo, x0, hi]), table, spec)  # [3, L*F]
            # Level j is Lipschitz along a dim with constant s_j * 2 (entries in [-1, 1]), so
            # across 2 eps it moves at most ~4e-5 * s_j; a jump would be O(1).
            scales = torch.tensor(spec.scales).repeat_interleave(spec.n_features)  # [L*F]
            bound = 2 * scales * (2 * eps) * 1.05 + 1e-6
            assert ((out[0] - out[2]).abs() <= bound).all()
            assert ((out[0] - out[1]).abs() <= bound / 2 + 1e-6).all()


# --- API --------------------------------------------------------------------------------------


def test_unknown_backend():
    with pytest.raises(ValueError, match="torch.*triton"):
        hash_grid_encode(torch.rand(2, 3), _random_table(TINY), TINY, backend="cuda")


def test_triton_backend_needs_cuda(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(NerfmineError, match="CUDA"):
        hash_grid_encode(torch.rand(2, 3), _random_table(TINY), TINY, backend="triton")


def test_triton_backend_missing_module(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "nerfmine.ops._triton.hash_grid", None)
    with pytest.raises(NerfmineError, match="backend='torch'"):
        hash_grid_encode(torch.rand(2, 3), _random_table(TINY), TINY, backend="triton")


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        hash_grid_encode(torch.rand(2, 2), _random_table(TINY), TINY)
    with pytest.raises(ValueError, match="table must have shape"):
        hash_grid_encode(torch.rand(2, 3), torch.zeros(5, 2), TINY)


def test_init_hash_table():
    spec = HashGridSpec()
    table = init_hash_table(spec, generator=torch.Generator().manual_seed(0))
    assert table.shape == (6098120, 2) and table.dtype == torch.float32
    assert table.abs().max() <= 1e-4 and table.std() > 5e-5
    again = init_hash_table(spec, generator=torch.Generator().manual_seed(0))
    assert torch.equal(table, again)
    assert init_hash_table(TINY, device="cpu").shape == (TINY.n_entries, 2)


def test_grad_sink_accumulates_in_place_and_matches_autograd():
    """With a grad_sink the backward adds the table gradient into it (over several passes)
    and leaves table.grad unset; the sum equals autograd's gradient of the whole batch."""
    from nerfmine.ops.hash_grid import HashGridSpec, hash_grid_encode, init_hash_table

    spec = HashGridSpec(n_levels=4, n_features=2, log2_table_size=6, base_resolution=3,
                        max_resolution=40)
    gen = torch.Generator().manual_seed(0)
    table = torch.nn.Parameter(init_hash_table(spec, generator=gen).double() * 1e3)
    x = torch.rand(301, 3, generator=gen, dtype=torch.float64)
    up = torch.randn(301, spec.output_dim, generator=gen, dtype=torch.float64)
    (hash_grid_encode(x, table, spec) * up).sum().backward()
    expected = table.grad.clone()
    table.grad = None
    sink = torch.full_like(table, 0.25)  # the backward adds to what is there
    for part in (slice(0, 100), slice(100, 301)):
        (hash_grid_encode(x[part], table, spec, grad_sink=sink) * up[part]).sum().backward()
    assert table.grad is None
    torch.testing.assert_close(sink - 0.25, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="grad_sink"):
        hash_grid_encode(x, table, spec, grad_sink=torch.zeros(3, 2, dtype=torch.float64))
