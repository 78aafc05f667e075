"""The PyTorch reference Adam step (nerfmine.ops.adam, backend="torch")."""

from __future__ import annotations

import pytest
import torch

from nerfmine.ops.adam import adam_step


def test_matches_torch_optim_adam_dense():
    torch.manual_seed(0)
    w = torch.randn(257)
    ours = w.clone()
    ref = torch.nn.Parameter(w.clone())
    opt = torch.optim.Adam([ref], lr=1e-2, betas=(0.9, 0.99), eps=1e-15, foreach=False)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for step in range(1, 21):
        g = torch.randn(257)
        ref.grad = g.clone()
        opt.step()
        adam_step(ours, g, m, v, step, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15)
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-5, atol=1e-6)
    st = opt.state[ref]
    torch.testing.assert_close(m, st["exp_avg"], rtol=1e-5, atol=1e-6)  # lerp vs mul-add
    torch.testing.assert_close(v, st["exp_avg_sq"], rtol=1e-5, atol=1e-10)


def test_step_tensor_equals_int():
    torch.manual_seed(1)
    a = [torch.randn(33) for _ in range(4)]
    a[3] = a[3].abs()
    b = [t.clone() for t in a]
    adam_step(a[0], a[1], a[2], a[3], 4, lr=1e-2)
    adam_step(b[0], b[1], b[2], b[3], torch.tensor(4), lr=1e-2)
    torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=0)


def test_l2_is_added_to_the_gradient_before_the_moments():
    # tcnn / torch.optim.Adam(weight_decay) semantics, not AdamW.
    torch.manual_seed(2)
    w = torch.randn(40)
    ours = w.clone()
    ref = torch.nn.Parameter(w.clone())
    opt = torch.optim.Adam([ref], lr=1e-2, betas=(0.9, 0.99), eps=1e-15, weight_decay=1e-2,
                           foreach=False)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for step in range(1, 6):
        g = torch.randn(40)
        ref.grad = g.clone()
        opt.step()
        adam_step(ours, g, m, v, step, lr=1e-2, weight_decay_l2=1e-2)
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-5, atol=1e-6)
    # and the moment really sees grad + wd * param
    p = torch.tensor([2.0])
    m, v = torch.zeros(1), torch.zeros(1)
    adam_step(p, torch.tensor([1.0]), m, v, 1, lr=0.0, beta1=0.9, weight_decay_l2=0.5)
    torch.testing.assert_close(m, torch.tensor([0.1 * (1.0 + 0.5 * 2.0)]))


def test_skip_zero_grad_leaves_elements_untouched():
    torch.manual_seed(3)
    p, m = torch.randn(100), torch.randn(100) * 0.01
    v = torch.rand(100) * 1e-3
    g = torch.randn(100)
    g[::3] = 0.0
    p0, m0, v0 = p.clone(), m.clone(), v.clone()
    h = p.half()  # an fp16 copy in sync before the step stays in sync
    h_stale = torch.full_like(h, 7.0)  # one that is not: only updated elements are written
    adam_step(p.clone(), g, m.clone(), v.clone(), 3, lr=1e-2, weight_decay_l2=0.1,
              skip_zero_grad=True, param_fp16=h_stale)
    adam_step(p, g, m, v, 3, lr=1e-2, weight_decay_l2=0.1, skip_zero_grad=True, param_fp16=h)
    z = g == 0
    assert torch.equal(p[z], p0[z]) and torch.equal(m[z], m0[z]) and torch.equal(v[z], v0[z])
    assert (p[~z] != p0[~z]).all() and (m[~z] != m0[~z]).all()
    assert torch.equal(h, p.half())
    assert torch.equal(h_stale[~z], p[~z].half()) and (h_stale[z] == 7.0).all()
    # without the skip rule, zero gradients still decay the moments and, with L2, move params
    p1, m1, v1 = p0.clone(), m0.clone(), v0.clone()
    adam_step(p1, g, m1, v1, 3, lr=1e-2, weight_decay_l2=0.1, skip_zero_grad=False)
    assert (m1[z] != m0[z]).all() and (p1[z] != p0[z]).all()


def test_bad_backend_and_step():
    t = torch.zeros(2)
    with pytest.raises(ValueError, match="backend"):
        adam_step(t, t, t.clone(), t.clone(), 1, lr=1e-2, backend="cuda")
    with pytest.raises(ValueError, match="step"):
        adam_step(t, t, t.clone(), t.clone(), 0, lr=1e-2)


def test_skipped_step_leaves_table_and_mlp_untouched_even_with_inf_gradients():
    """An overflowed fp16 step (inf/NaN gradients) is skipped without touching anything."""
    from nerfmine.optim import NGPAdam

    table = torch.nn.Parameter(torch.tensor([[0.5, -0.5], [0.25, 0.0]]))
    weight = torch.nn.Parameter(torch.tensor([[1.0, 2.0]]))
    opt = NGPAdam([table], [weight], lr=0.01)
    opt.init_state()
    before = [table.detach().clone(), weight.detach().clone()]
    table.grad = torch.tensor([[float("inf"), float("nan")], [1.0, 0.0]])
    weight.grad = torch.tensor([[float("nan"), 1.0]])
    opt.step(skip=torch.tensor(True))
    assert torch.equal(table, before[0]) and torch.equal(weight, before[1])
    for p in (table, weight):
        state = opt.state[p]
        assert torch.isfinite(state["exp_avg"]).all() and torch.isfinite(state["exp_avg_sq"]).all()
        assert float(state["step"]) == 0
    table.grad = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    weight.grad = torch.tensor([[1.0, 1.0]])
    opt.step(skip=torch.tensor(False))
    assert table[0, 0] < before[0][0, 0] and torch.equal(table[1], before[0][1])


def test_lr_tensor_equals_float():
    g = torch.Generator().manual_seed(3)
    p, grad = torch.randn(57, generator=g), torch.randn(57, generator=g)
    grad[::5] = 0.0
    a = [p.clone(), torch.zeros(57), torch.zeros(57)]
    b = [p.clone(), torch.zeros(57), torch.zeros(57)]
    for step in (1, 2, 3):
        adam_step(a[0], grad, a[1], a[2], step, lr=3e-3, skip_zero_grad=True)
        adam_step(b[0], grad, b[1], b[2], torch.tensor(step), lr=torch.tensor(3e-3),
                  skip_zero_grad=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=0.0)
    assert not torch.equal(a[0], p)  # the step moved something


@pytest.mark.parametrize("sparse", [False, True])
def test_skip_flag_discards_the_whole_step(sparse):
    torch.manual_seed(4)
    p, m, v = torch.randn(50), torch.randn(50) * 0.01, torch.rand(50) * 1e-3
    g = torch.randn(50)
    g[::4] = 0.0
    h = p.half()
    before = [t.clone() for t in (p, m, v, h)]
    adam_step(p, g, m, v, 2, lr=1e-2, weight_decay_l2=0.1, skip_zero_grad=sparse,
              param_fp16=h, skip=torch.tensor(True))
    for now, old in zip((p, m, v, h), before):
        assert torch.equal(now, old)
    adam_step(p, g, m, v, 2, lr=1e-2, weight_decay_l2=0.1, skip_zero_grad=sparse,
              param_fp16=h, skip=torch.tensor(False))
    ref = [t.clone() for t in before[:3]]
    adam_step(*ref[:1], g, *ref[1:], 2, lr=1e-2, weight_decay_l2=0.1, skip_zero_grad=sparse)
    assert torch.equal(p, ref[0]) and torch.equal(m, ref[1]) and torch.equal(v, ref[2])
    assert torch.equal(h, p.half())
