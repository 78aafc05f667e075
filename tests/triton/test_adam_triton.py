"""Fused Triton Adam vs the PyTorch reference (nerfmine.ops.adam.adam_step_torch)."""

from __future__ import annotations

import pytest
import torch

from nerfmine.ops.adam import adam_step

pytestmark = pytest.mark.interpreter


def _state(n, device, seed, zero_frac=0.0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, generator=g)
    grad = torch.randn(n, generator=g) * 0.1
    if zero_frac:
        grad[torch.rand(n, generator=g) < zero_frac] = 0.0
    m = torch.randn(n, generator=g) * 0.01
    v = torch.rand(n, generator=g) * 1e-3
    return [t.to(device) for t in (p, grad, m, v)]


@pytest.mark.parametrize("n", [1, 37, 1030])
@pytest.mark.parametrize("wd", [0.0, 1e-2])
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("step_kind", ["int", "tensor"])
def test_matches_reference(device, n, wd, skip, step_kind):
    p, grad, m, v = _state(n, device, seed=n, zero_frac=0.3)
    ref = [t.clone() for t in (p, m, v)]
    h = p.half()  # in sync before the first step
    href = h.clone()
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15, weight_decay_l2=wd, skip_zero_grad=skip)
    for step in (1, 2, 7):
        s = torch.tensor(step, device=device) if step_kind == "tensor" else step
        adam_step(ref[0], grad, ref[1], ref[2], step, param_fp16=href, backend="torch", **kw)
        adam_step(p, grad, m, v, s, param_fp16=h, backend="triton", **kw)
    torch.testing.assert_close(p, ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m, ref[1], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(v, ref[2], rtol=1e-5, atol=1e-10)
    assert torch.equal(h, p.half())


def test_skip_zero_grad_leaves_exact_values(device):
    n = 300
    p, grad, m, v = _state(n, device, seed=3, zero_frac=0.5)
    zero = grad == 0
    assert zero.any() and (~zero).any()
    p0, m0, v0 = p.clone(), m.clone(), v.clone()
    h = torch.full((n,), 7.0, dtype=torch.float16, device=device)
    adam_step(p, grad, m, v, 5, lr=1e-2, weight_decay_l2=0.1, skip_zero_grad=True,
              param_fp16=h, backend="triton")
    assert (h[zero] == 7.0).all()  # untouched elements are neither read nor written
    h[zero] = p[zero].half()
    assert torch.equal(p[zero], p0[zero])
    assert torch.equal(m[zero], m0[zero])
    assert torch.equal(v[zero], v0[zero])
    assert (p[~zero] != p0[~zero]).all()
    assert torch.equal(h, p.half())


def test_l2_only_where_applied(device):
    # skip off: zero-gradient elements still decay through the L2 term; wd=0 leaves them still.
    n = 64
    p = torch.linspace(-1, 1, n, device=device)
    grad = torch.zeros(n, device=device)
    for wd, moves in ((0.0, False), (1e-1, True)):
        q, m, v = p.clone(), torch.zeros_like(p), torch.zeros_like(p)
        adam_step(q, grad, m, v, 1, lr=1e-2, weight_decay_l2=wd, backend="triton")
        nz = p != 0
        assert bool((q[nz] != p[nz]).all()) == moves
        if moves:  # first Adam step moves by ~lr * sign(g) with g = wd * p
            torch.testing.assert_close(q[nz], p[nz] - 1e-2 * torch.sign(p[nz]), rtol=0, atol=1e-6)


def test_fp16_copy_of_2d_table(device):
    p, grad, m, v = _state(2 * 50, device, seed=9)
    p, grad, m, v = (t.view(50, 2) for t in (p, grad, m, v))
    h = torch.empty(50, 2, dtype=torch.float16, device=device)
    adam_step(p, grad, m, v, 1, lr=1e-2, param_fp16=h, backend="triton")
    assert torch.equal(h, p.half())


@pytest.mark.parametrize("n", [5, 1030])
def test_lr_tensor_matches_reference(device, n):
    p, grad, m, v = _state(n, device, seed=n + 1, zero_frac=0.2)
    ref = [t.clone() for t in (p, m, v)]
    lr = torch.tensor(7e-3, device=device)
    for step in (1, 4):
        adam_step(ref[0], grad, ref[1], ref[2], step, lr=7e-3, skip_zero_grad=True,
                  backend="torch")
        adam_step(p, grad, m, v, torch.tensor(step, device=device), lr=lr, skip_zero_grad=True,
                  backend="triton")
    torch.testing.assert_close(p, ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m, ref[1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("flag", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_skip_flag_matches_reference(device, flag, sparse):
    p, grad, m, v = _state(517, device, seed=11, zero_frac=0.4)
    ref = [t.clone() for t in (p, m, v)]
    h = p.half()
    href = h.clone()
    skip = torch.tensor(flag, device=device)
    kw = dict(lr=1e-2, weight_decay_l2=1e-2, skip_zero_grad=sparse, skip=skip)
    adam_step(ref[0], grad, ref[1], ref[2], 3, param_fp16=href, backend="torch", **kw)
    adam_step(p, grad, m, v, torch.tensor(3, device=device), param_fp16=h, backend="triton", **kw)
    torch.testing.assert_close(p, ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m, ref[1], rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(v, ref[2], rtol=1e-5, atol=1e-10)
    assert torch.equal(h, p.half())
    if flag:
        assert torch.equal(h, href) and torch.equal(p, _state(517, device, seed=11)[0])
