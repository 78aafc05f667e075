"""The Triton hash encoding on a 2-D grid (the image primitive) vs the PyTorch reference.

Same kernel as the 3-D grid, specialised on the constexpr ``DIMS = 2``; the tolerances are those
of tests/triton/test_hash_grid_triton.py and for the same reasons: against the reference on the
fp16-rounded table only the fp32 summation order differs (rtol/atol 1e-5); against the fp32
table the fp16 rounding of features adds up to 2^-11 of the table scale (atol 1e-3); gradients
never see fp16 and differ only by the order of fp32 atomic sums (rtol/atol 1e-5).
"""

from __future__ import annotations

import pytest
import torch

from nerfmine.ops.hash_grid import HashGridSpec, _hash_grid_encode_torch

pytestmark = pytest.mark.interpreter

# 5 levels, resolutions 4, 8, 16, 32, 64: res^2 = 16, 64, 256 fit in 2^9 rows (dense), 32^2
# and 64^2 do not (hashed, whose y * 2654435761 overflows uint32).
SPEC = HashGridSpec(n_levels=5, log2_table_size=9, base_resolution=4, max_resolution=64,
                    n_dims=2)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Small blocks keep the interpreter fast and give several blocks even at N = 131."""
    from nerfmine.ops._triton import hash_grid as tri

    monkeypatch.setattr(tri, "FWD_BLOCK", 32)
    monkeypatch.setattr(tri, "BWD_BLOCK", 32)
    monkeypatch.setattr(tri, "BWD_RUNS_BLOCK", 16)
    return tri


def _inputs(n, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g)
    if n >= 3:  # the square's edges: the dense index wraps past res^2 at x = 1
        x[0] = torch.tensor([0.0, 0.0])
        x[1] = torch.tensor([1.0, 1.0])
        x[2] = torch.tensor([1.0, 0.0])
    table = torch.rand(SPEC.n_entries, 2, generator=g) * 2 - 1
    grad_out = torch.randn(n, SPEC.output_dim, generator=g)
    return x.to(device), table.to(device), grad_out.to(device)


def test_spec_has_dense_and_hashed_levels():
    assert SPEC.dense_levels == (True, True, True, False, False)
    assert SPEC.resolutions[-1] * 2654435761 > 2**32


@pytest.mark.parametrize("n", [1, 5, 37, 131])
def test_forward_matches_reference(device, n):
    from nerfmine.ops._triton.hash_grid import hash_grid_encode_triton

    x, table, _ = _inputs(n, device, seed=n)
    out = hash_grid_encode_triton(x, table, SPEC)
    assert out.shape == (n, SPEC.output_dim) and out.dtype == torch.float32
    torch.testing.assert_close(out, _hash_grid_encode_torch(x, table.half().float(), SPEC),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, _hash_grid_encode_torch(x, table, SPEC), rtol=0, atol=1e-3)


@pytest.mark.parametrize("n", [1, 5, 37, 131])
@pytest.mark.parametrize("pre_reduce", [True, False])
def test_table_gradient_matches_reference(device, n, pre_reduce, small_blocks, monkeypatch):
    from nerfmine.ops._triton.hash_grid import hash_grid_encode_triton

    monkeypatch.setattr(small_blocks, "PRE_REDUCE", pre_reduce)
    x, table, grad_out = _inputs(n, device, seed=100 + n)
    t_tri = table.clone().requires_grad_(True)
    hash_grid_encode_triton(x, t_tri, SPEC).backward(grad_out)
    t_ref = table.clone().requires_grad_(True)
    _hash_grid_encode_torch(x, t_ref, SPEC).backward(grad_out)
    torch.testing.assert_close(t_tri.grad, t_ref.grad, rtol=1e-5, atol=1e-5)
    assert torch.equal(t_tri.grad == 0, t_ref.grad == 0)  # untouched rows stay exactly 0


def test_runs_of_points_in_one_cell(device):
    """Pixels in runs sharing a cell (a scanline of a tile): the run-length reduction sums them."""
    from nerfmine.ops._triton.hash_grid import hash_grid_backward_triton

    g = torch.Generator().manual_seed(3)
    n = 80
    run_id = torch.cumsum(torch.rand(n, generator=g) < 0.3, 0)
    centre = torch.where(run_id[:, None] % 2 == 0, 0.3, 0.62)
    x = (centre + 0.005 * torch.rand(n, 2, generator=g)).to(device)
    grad_out = torch.randn(n, SPEC.output_dim, generator=g).to(device)
    table = torch.zeros(SPEC.n_entries, 2, device=device, requires_grad=True)
    _hash_grid_encode_torch(x, table, SPEC).backward(grad_out)
    for pre_reduce in (True, False):
        got = hash_grid_backward_triton(x, grad_out, SPEC, pre_reduce=pre_reduce)
        torch.testing.assert_close(got, table.grad, rtol=1e-5, atol=1e-5)


def test_public_dispatch_and_shape_check(device):
    from nerfmine.ops.hash_grid import hash_grid_encode

    x, table, _ = _inputs(7, device, seed=11)
    out = hash_grid_encode(x, table, SPEC, backend="triton")
    torch.testing.assert_close(out, hash_grid_encode(x, table, SPEC, backend="torch"),
                               rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        hash_grid_encode(torch.zeros(4, 3, device=device), table, SPEC, backend="triton")
