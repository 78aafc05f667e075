"""Triton hash encoding vs the PyTorch reference nerfmine.ops.hash_grid._hash_grid_encode_torch.

Tolerances. The kernel looks features up in an fp16 copy of the table and interpolates in fp32.
* Against the reference run on the fp16-rounded table (``table.half().float()``) the only
  differences are fp32 summation order (and FMA contraction of ``x * s + 0.5`` on a GPU, which
  moves a point across a cell face only where the moved corners' weights are ~0): rtol/atol
  1e-5 of the output scale.
* Against the fp32 table the fp16 rounding of the features adds up to 2^-11 relative per
  feature: atol = 1e-3 x the table scale.
* Gradients do not see fp16 at all (weights are fp32, the buffer is fp32); they differ from the
  reference only by the order of the fp32 atomic sums: rtol/atol 1e-5 of the gradient scale.
"""

from __future__ import annotations

import pytest
import torch

from nerfmine.ops import hash_grid as ref_mod
from nerfmine.ops.hash_grid import HashGridSpec, _hash_grid_encode_torch

pytestmark = pytest.mark.interpreter

# 4 levels, resolutions 4, 11, 26, 64: two dense levels (64 and 1336 rows) and two hashed ones
# (2048 rows each), whose hash products overflow uint32.
SPEC = HashGridSpec(n_levels=4, log2_table_size=11, base_resolution=4, max_resolution=64)


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Small blocks keep the interpreter fast and give several blocks even at N = 130."""
    from nerfmine.ops._triton import hash_grid as tri

    monkeypatch.setattr(tri, "FWD_BLOCK", 32)
    monkeypatch.setattr(tri, "BWD_BLOCK", 32)
    monkeypatch.setattr(tri, "BWD_RUNS_BLOCK", 16)
    return tri


def _inputs(n, device, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g)
    if n >= 4:  # the cube's faces: the dense index wraps past res^3 at x = 1
        x[0] = torch.tensor([0.0, 0.0, 0.0])
        x[1] = torch.tensor([1.0, 1.0, 1.0])
        x[2] = torch.tensor([1.0, 0.0, 0.5])
    table = (torch.rand(SPEC.n_entries, 2, generator=g) * 2 - 1) * scale
    grad_out = torch.randn(n, SPEC.output_dim, generator=g)
    return x.to(device), table.to(device), grad_out.to(device)


def test_spec_has_dense_and_hashed_levels():
    assert SPEC.dense_levels == (True, True, False, False)
    assert SPEC.resolutions[-1] * 2654435761 > 2**32


@pytest.mark.parametrize("n", [1, 7, 37, 130])
def test_forward_matches_reference(device, n):
    from nerfmine.ops._triton.hash_grid import hash_grid_encode_triton

    x, table, _ = _inputs(n, device, seed=n)
    out = hash_grid_encode_triton(x, table, SPEC)
    assert out.shape == (n, SPEC.output_dim) and out.dtype == torch.float32
    ref16 = _hash_grid_encode_torch(x, table.half().float(), SPEC)
    torch.testing.assert_close(out, ref16, rtol=1e-5, atol=1e-5)
    ref32 = _hash_grid_encode_torch(x, table, SPEC)
    torch.testing.assert_close(out, ref32, rtol=0, atol=1e-3)


@pytest.mark.parametrize("n", [1, 7, 37, 130])
@pytest.mark.parametrize("pre_reduce", [True, False])
def test_table_gradient_matches_reference(device, n, pre_reduce, small_blocks, monkeypatch):
    from nerfmine.ops._triton.hash_grid import hash_grid_encode_triton

    monkeypatch.setattr(small_blocks, "PRE_REDUCE", pre_reduce)
    x, table, grad_out = _inputs(n, device, seed=100 + n)
    t_tri = table.clone().requires_grad_(True)
    hash_grid_encode_triton(x, t_tri, SPEC).backward(grad_out)
    t_ref = table.clone().requires_grad_(True)
    _hash_grid_encode_torch(x, t_ref, SPEC).backward(grad_out)
    assert t_tri.grad.dtype == torch.float32
    torch.testing.assert_close(t_tri.grad, t_ref.grad, rtol=1e-5, atol=1e-5)
    # rows no point touches stay exactly zero
    assert torch.equal(t_tri.grad == 0, t_ref.grad == 0)


def test_gradient_under_heavy_contention(device, small_blocks):
    """All points in two tiny clusters, in runs of 1 to 9 consecutive points: rows repeat inside
    a block and across blocks, which exercises the run-length reduction (runs crossing block
    edges, runs ending at N) and the atomics."""
    from nerfmine.ops._triton.hash_grid import hash_grid_backward_triton

    g = torch.Generator().manual_seed(7)
    n = 96
    run_id = torch.cumsum(torch.rand(n, generator=g) < 0.25, 0)  # runs of random length
    centre = torch.where(run_id[:, None] % 2 == 0, 0.2, 0.71)
    x = (centre + 0.01 * torch.rand(n, 3, generator=g)).to(device)
    grad_out = torch.randn(n, SPEC.output_dim, generator=g).to(device)
    table = torch.zeros(SPEC.n_entries, 2, device=device, requires_grad=True)
    _hash_grid_encode_torch(x, table, SPEC).backward(grad_out)
    for pre_reduce in (True, False):
        got = hash_grid_backward_triton(x, grad_out, SPEC, pre_reduce=pre_reduce)
        torch.testing.assert_close(got, table.grad, rtol=1e-5, atol=1e-5)


def test_given_fp16_copy_is_used_and_x_gets_no_gradient(device):
    from nerfmine.ops._triton.hash_grid import hash_grid_encode_triton

    x, table, _ = _inputs(37, device, seed=5)
    x.requires_grad_(True)
    t = table.clone().requires_grad_(True)
    # a deliberately different fp16 copy: the lookups must come from it
    copy = (table * 2).half()
    out = hash_grid_encode_triton(x, t, SPEC, table_fp16=copy)
    torch.testing.assert_close(out, _hash_grid_encode_torch(x.detach(), copy.float(), SPEC),
                               rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert x.grad is None and t.grad is not None


def test_public_dispatch_and_default_spec_geometry(device):
    x, table, _ = _inputs(7, device, seed=11)
    out = ref_mod.hash_grid_encode(x, table, SPEC, backend="triton")
    torch.testing.assert_close(out, ref_mod.hash_grid_encode(x, table, SPEC, backend="torch"),
                               rtol=0, atol=1e-3)
    # the default spec's level parameters are accepted (dense prefix, power-of-two hashed sizes)
    from nerfmine.ops._triton.hash_grid import _level_params

    scales, ints, n_dense = _level_params(HashGridSpec(), device)
    assert n_dense == sum(HashGridSpec().dense_levels) and ints.shape == (16, 4)


def test_empty_input(device):
    from nerfmine.ops._triton.hash_grid import hash_grid_encode_triton

    t = torch.zeros(SPEC.n_entries, 2, device=device, requires_grad=True)
    out = hash_grid_encode_triton(torch.zeros(0, 3, device=device), t, SPEC)
    assert out.shape == (0, SPEC.output_dim)
    out.sum().backward()
    assert t.grad is not None and not t.grad.any()


def test_grad_sink_accumulates_over_chunks(device):
    """A grad_sink receives the table gradient of several backward passes, added in place."""
    from nerfmine.ops._triton.hash_grid import hash_grid_encode_triton

    x, table, grad_out = _inputs(70, device, seed=7)
    t_ref = table.clone().requires_grad_(True)
    _hash_grid_encode_torch(x, t_ref, SPEC).backward(grad_out)
    t_tri = table.clone().requires_grad_(True)
    sink = torch.ones_like(table)
    for part in (slice(0, 33), slice(33, 70)):
        hash_grid_encode_triton(x[part], t_tri, SPEC, grad_sink=sink).backward(grad_out[part])
    assert t_tri.grad is None
    scale = t_ref.grad.abs().max().item()
    torch.testing.assert_close(sink - 1.0, t_ref.grad, rtol=1e-5, atol=1e-5 * scale)
