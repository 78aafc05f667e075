"""Triton mining kernels (importance, race, radix select, compaction) vs the torch reference
(nerfmine.ops.mining.select_by_keys on the same keys; HardSampleMiner's torch path for tau, b)."""

from __future__ import annotations

import math

import pytest
import torch

from nerfmine.miner import HardSampleMiner
from nerfmine.ops.mining import select_by_keys

pytestmark = pytest.mark.interpreter

mining = pytest.importorskip("nerfmine.ops._triton.mining")


def _grads(c: int, seed: int, zero_frac: float = 0.3, nan: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(c, 4, generator=g) * torch.rand(c, 1, generator=g) ** 4
    grad[torch.rand(c, generator=g) < zero_frac] = 0.0
    if nan:
        grad[torch.randint(0, c, (nan,), generator=g), 1] = float("nan")
    return grad


def _run(grad, n, b, size, seed, device):
    ws = mining.MineWorkspace(grad.shape[0], torch.device(device))
    g, partial = mining.importance_and_keys(grad.to(device), torch.tensor(n, device=device),
                                            torch.tensor([seed], device=device), ws)
    out = mining.select_drawn(torch.tensor(b, device=device), size, ws)
    return g.cpu(), partial.cpu(), ws.codes.cpu(), out.cpu()


@pytest.mark.parametrize("c,n", [(1, 1), (700, 650), (1537, 1537), (3000, 2100)])
def test_importance_sums_and_codes(device, c, n):
    grad = _grads(c, seed=c, nan=2 if c > 100 else 0)
    grad[::7] *= 1e-25  # squares would underflow: the norm must not
    grad[3::7] *= 1e20
    g, partial, codes, _ = _run(grad, n, 0, 0, seed=5, device=device)
    ref = HardSampleMiner().importance(grad, n)
    torch.testing.assert_close(g, ref, rtol=1e-6, atol=0.0, equal_nan=True)
    finite = torch.where(torch.isnan(ref), torch.zeros_like(ref), ref).double()
    sums = partial.double().sum(0)
    has_nan = bool(torch.isnan(ref).any())
    if not has_nan:
        torch.testing.assert_close(sums[0], finite.sum(), rtol=1e-5, atol=0.0)
        torch.testing.assert_close(sums[1], (finite * finite).sum(), rtol=1e-5, atol=0.0)
    assert torch.isnan(sums[0]) == has_nan
    assert int(sums[2]) == int((ref > 0).sum())
    # Codes: 0 exactly for non-candidates; the others decode to finite keys.
    keys = mining.code_to_key(codes)
    assert torch.equal(codes == 0, ~(ref > 0))
    assert torch.isfinite(keys[ref > 0]).all()
    assert torch.equal(mining.key_to_code(keys), codes)


@pytest.mark.parametrize("c,n", [(700, 650), (1537, 1537), (3000, 2100)])
def test_selection_matches_reference_on_the_same_keys(device, c, n):
    grad = _grads(c, seed=10 + c, nan=3)
    n_pos = int((HardSampleMiner().importance(grad, n) > 0).sum())
    for b, size in [(0, 256), (1, 256), (37, 64), (n_pos // 2, n_pos), (n_pos, c), (n_pos, n_pos),
                    (n_pos + 50, c)]:
        _, _, codes, out = _run(grad, n, b, size, seed=b + 1, device=device)
        ref_idx, ref_mask = select_by_keys(mining.code_to_key(codes), b, size)
        assert torch.equal(out, ref_idx), (b, size)
        assert int(ref_mask.sum()) == min(b, size, n_pos)


def test_selection_with_ties_across_blocks(device):
    # Hand-made codes with long runs of equal keys spread over several blocks: the threshold
    # falls inside a tie and the ties are taken by index.
    c = 2600
    gen = torch.Generator().manual_seed(3)
    keys = torch.randint(0, 6, (c,), generator=gen).float() - 2.0  # many exact ties
    keys[torch.rand(c, generator=gen) < 0.2] = float("-inf")
    codes = mining.key_to_code(keys)
    finite = int(torch.isfinite(keys).sum())
    for b, size in [(1, 1), (300, 700), (1000, 1000), (finite - 3, c), (finite, 2000),
                    (finite + 9, c)]:
        ws = mining.MineWorkspace(c, torch.device(device))
        ws.codes.copy_(codes.to(device))
        ws.hist.zero_()
        high = (codes.to(torch.int64) & 0xFFFFFFFF) >> 16
        ws.hist[0].copy_(torch.bincount(high[codes != 0], minlength=1 << 16).to(torch.int32))
        out = mining.select_drawn(torch.tensor(b, device=device), size, ws).cpu()
        ref_idx, _ = select_by_keys(keys, b, size)
        assert torch.equal(out, ref_idx), (b, size)


def test_keys_are_log_g_plus_gumbel(device):
    # G = 1 everywhere: key = -log E, E ~ Exp(1), i.e. a standard Gumbel variable.
    c = 8192
    grad = torch.zeros(c, 4)
    grad[:, 0] = 1.0
    _, _, codes, _ = _run(grad, c, 0, 0, seed=123, device=device)
    x = torch.sort(mining.code_to_key(codes).double()).values
    cdf = torch.exp(-torch.exp(-x))
    emp = torch.arange(1, c + 1, dtype=torch.float64) / c
    ks = float(torch.maximum((emp - cdf).abs(), (emp - 1.0 / c - cdf).abs()).max())
    assert ks < 1.63 / math.sqrt(c)  # Kolmogorov-Smirnov at the 1 % level
    # Another seed gives another draw; the same seed the same one.
    _, _, again, _ = _run(grad, c, 0, 0, seed=123, device=device)
    _, _, other, _ = _run(grad, c, 0, 0, seed=124, device=device)
    assert torch.equal(codes, again) and not torch.equal(codes, other)


def test_mine_triton_matches_torch_in_b_tau_and_layout(device):
    c, n = 2048, 1900
    torch_miner, triton_miner = HardSampleMiner(), HardSampleMiner().to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    for step in range(4):
        grad = _grads(c, seed=50 + step, zero_frac=0.5) ** (1 + step)
        if step == 3:
            grad = torch.zeros(c, 4)  # all empty: b = 0, nothing NaN
        r0 = torch_miner.mine(grad, torch.tensor(n), c, torch.Generator().manual_seed(step))
        r1 = triton_miner.mine(grad.to(device), torch.tensor(n, device=device), c, gen,
                               backend="triton")
        assert int(r1.b) == int(r0.b)
        assert r1.indices.shape == r0.indices.shape
        assert int(r1.mask.sum()) == int(r1.b) and bool(r1.mask[: int(r1.b)].all())
        torch.testing.assert_close(r1.tau.cpu(), r0.tau, rtol=1e-6, atol=0.0)
        torch.testing.assert_close(triton_miner.tau_bar.cpu(), torch_miner.tau_bar)
        imp = r1.importance.cpu()
        assert (imp[r1.indices[r1.mask].cpu()] > 0).all()
        idx = r1.indices.cpu()
        assert idx.unique().numel() == idx.numel() and int(idx.max()) < c
        for t in (r1.importance, r1.tau, triton_miner.tau_bar):
            assert torch.isfinite(t).all()
    assert triton_miner.mean_fraction() == pytest.approx(torch_miner.mean_fraction())


@pytest.mark.parametrize("width", [1, 3])
def test_race_takes_fewer_outputs_than_four(device, width):
    """An image's RGB gradients [C, 3] and an SDF's distance gradient [C, 1]: the triton race
    pads them with zero columns (the kernel reads four values a row; read unpadded, the rows
    slid into one another and past the buffer's end, an illegal address on an H200 for
    [C, 1]) and gives the reference's importance, sums and candidate count."""
    from nerfmine.ops.mining import race

    c, n = 1537, 1400
    grad = _grads(c, seed=width)[:, :width].contiguous()
    ref = race(grad, n, torch.Generator().manual_seed(0), backend="torch")
    got = race(grad.to(device), torch.tensor(n, device=device),
               torch.Generator(device=device).manual_seed(0), backend="triton")
    torch.testing.assert_close(got.importance.cpu(), ref.importance, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(got.sum_importance.cpu(), ref.sum_importance, rtol=1e-5,
                               atol=0.0)
    assert int(got.n_candidates) == int(ref.n_candidates)
    with pytest.raises(ValueError, match=r"must be \[C, 4\]"):
        _run(grad, n, 0, 0, seed=1, device=device)
    with pytest.raises(ValueError, match="1 <= K <= 4"):
        race(torch.zeros(c, 5, device=device), n, backend="triton")
