"""Tests of nerfmine.miner: the draw, the tau / b formulas, the buffer and sync-freedom.

Statistical tests run at fixed seeds, so they are deterministic; their thresholds (p > 1e-3,
5 sigma) only say how surprising a failure would be for a correct sampler.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nerfmine.errors import ConfigError
from nerfmine.miner import (
    BUFFER_MULTIPLE,
    HardSampleMiner,
    MinerConfig,
    MiningResult,
)
from nerfmine.ops.mining import race_keys, select_by_keys

P_MIN = 1e-3


# ---------------------------------------------------------------------- helpers


def assert_layout(indices: torch.Tensor, mask: torch.Tensor, n_slots: int) -> None:
    """The buffer layout: distinct valid indices, the drawn ones first (mask a prefix), each
    part ascending, and the padding the lowest-numbered undrawn slots."""
    d = int(mask.sum())
    assert mask[:d].all() and not mask[d:].any()
    assert 0 <= int(indices.min()) and int(indices.max()) < n_slots
    assert indices.unique().numel() == indices.numel()
    drawn, pad = indices[:d], indices[d:]
    assert (drawn[1:] > drawn[:-1]).all() and (pad[1:] > pad[:-1]).all()
    undrawn = torch.ones(n_slots, dtype=torch.bool)
    undrawn[drawn] = False
    assert torch.equal(pad, undrawn.nonzero().flatten()[: pad.numel()])


def chi2_sf(x: float, df: int) -> float:
    """Survival function of the chi-square distribution (closed forms for integer df)."""
    if x <= 0:
        return 1.0
    h = x / 2.0
    if df % 2 == 0:  # Q(k, h) = exp(-h) sum_{j<k} h^j / j!
        term, total = 1.0, 1.0
        for j in range(1, df // 2):
            term *= h / j
            total += term
        return math.exp(-h) * total
    # odd: erfc(sqrt(h)) + exp(-h) sum_{j=0}^{(df-3)/2} h^(j+1/2) / Gamma(j+3/2)
    total = math.erfc(math.sqrt(h))
    for j in range((df - 1) // 2):
        total += math.exp((j + 0.5) * math.log(h) - h - math.lgamma(j + 1.5))
    return total


def chisquare_p(counts: list[int] | torch.Tensor, probs: list[float]) -> float:
    counts = [int(c) for c in counts]
    n = sum(counts)
    assert abs(sum(probs) - 1.0) < 1e-9
    stat = sum((c - n * p) ** 2 / (n * p) for c, p in zip(counts, probs, strict=True))
    return chi2_sf(stat, len(counts) - 1)


def sequence_probs(w: list[float], b: int) -> dict[tuple[int, ...], float]:
    """Exact probabilities of every ordered sequence of b successive draws without
    replacement, each draw proportional to w among the remaining items."""
    total = sum(w)
    out = {}
    for seq in itertools.permutations(range(len(w)), b):
        prob, left = 1.0, total
        for i in seq:
            prob *= w[i] / left
            left -= w[i]
        out[seq] = prob
    return out


def subset_probs(w: list[float], b: int) -> dict[tuple[int, ...], float]:
    out: dict[tuple[int, ...], float] = {}
    for seq, prob in sequence_probs(w, b).items():
        key = tuple(sorted(seq))
        out[key] = out.get(key, 0.0) + prob
    return out


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grads_from_importance(g: torch.Tensor) -> torch.Tensor:
    """grad_raw [C, 4] whose row norms are g (all mass on the density column)."""
    out = torch.zeros(g.shape[0], 4)
    out[:, 0] = g
    return out


def with_tau_bar(value: float, config: MinerConfig | None = None) -> HardSampleMiner:
    miner = HardSampleMiner(config)
    miner.tau_bar.fill_(value)
    miner.refresh_host_copy()
    return miner


def test_chi2_sf_helper_matches_known_values():
    # Reference values (scipy.stats.chi2.sf).
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(5.991464547107979, 2) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(16.918977604620448, 9) == pytest.approx(0.05, rel=1e-9)
    assert chi2_sf(149.6583468768255, 119) == pytest.approx(0.03, rel=1e-9)
    assert chi2_sf(43.82019596451753, 19) == pytest.approx(1e-3, rel=1e-9)


# ---------------------------------------------------------------------- the draw


def test_uniform_importance_gives_uniform_single_draw():
    miner = HardSampleMiner()
    g = torch.ones(20000, 10)  # 20000 independent draws of 1 from 10
    indices, mask = miner.select(g, 1, 10, gen(0))
    assert mask.sum(dim=-1).eq(1).all()
    picked = indices[mask]  # [20000]
    counts = torch.bincount(picked, minlength=10)
    assert chisquare_p(counts, [0.1] * 10) > P_MIN


def test_uniform_importance_gives_uniform_subsets():
    miner = HardSampleMiner()
    n_rows, n, b = 60000, 10, 3
    indices, mask = miner.select(torch.ones(n_rows, n), b, n, gen(1))
    subsets = indices[mask].view(n_rows, b)  # ascending within a row
    keys = (subsets[:, 0] * n + subsets[:, 1]) * n + subsets[:, 2]
    all_subsets = list(itertools.combinations(range(n), b))
    code = {(i * n + j) * n + k: s for s, (i, j, k) in enumerate(all_subsets)}
    counts = [0] * len(all_subsets)
    for key, c in zip(*torch.unique(keys, return_counts=True), strict=True):
        counts[code[int(key)]] = int(c)
    assert sum(counts) == n_rows
    assert chisquare_p(counts, [1 / len(all_subsets)] * len(all_subsets)) > P_MIN


W = [4.0, 2.0, 1.0, 0.5, 0.25]  # p_0 = 0.516: b * p_0 > 1 for b >= 2 (saturation)


def test_first_draw_frequencies_match_p():
    miner = HardSampleMiner()
    n_rows = 100000
    order = miner.draw_order(torch.tensor(W).expand(n_rows, -1), len(W), gen(2))  # [N, 5]
    counts = torch.bincount(order[:, 0], minlength=len(W))
    p = [w / sum(W) for w in W]
    assert chisquare_p(counts, p) > P_MIN


@pytest.mark.parametrize("b", [2, 3])
def test_inclusion_matches_successive_sampling_without_replacement(b):
    miner = HardSampleMiner()
    n_rows = 100000
    g = torch.tensor(W).expand(n_rows, -1)
    indices, mask = miner.select(g, b, len(W), gen(10 + b))
    assert mask.sum(dim=-1).eq(b).all()

    # Exact inclusion probabilities by enumerating every ordered sequence.
    exact_subsets = subset_probs(W, b)
    exact_incl = [sum(pr for s, pr in exact_subsets.items() if i in s) for i in range(len(W))]
    assert sum(exact_incl) == pytest.approx(b)
    # The method's point: inclusion is not b * p (large p saturate below 1).
    assert exact_incl[0] < 1.0 < b * W[0] / sum(W)

    drawn = torch.zeros(n_rows, len(W), dtype=torch.bool)
    drawn.scatter_(1, indices, mask)  # [N, 5] inclusion indicators
    freq = drawn.double().mean(dim=0)
    for i, pi in enumerate(exact_incl):
        sigma = math.sqrt(pi * (1 - pi) / n_rows)
        assert abs(float(freq[i]) - pi) < 5 * sigma, (i, float(freq[i]), pi)

    # Joint law of the drawn subset.
    subsets = sorted(exact_subsets)
    code = {s: k for k, s in enumerate(subsets)}
    weights = torch.tensor([1 << i for i in range(len(W))])
    bits = (drawn.long() * weights).sum(dim=1)
    bit_to_subset = {sum(1 << i for i in s): s for s in subsets}
    counts = [0] * len(subsets)
    for key, c in zip(*torch.unique(bits, return_counts=True), strict=True):
        counts[code[bit_to_subset[int(key)]]] = int(c)
    assert chisquare_p(counts, [exact_subsets[s] for s in subsets]) > P_MIN


def test_ordered_pairs_follow_successive_sampling():
    miner = HardSampleMiner()
    n_rows = 100000
    order = miner.draw_order(torch.tensor(W).expand(n_rows, -1), 2, gen(3))  # [N, 2]
    exact = sequence_probs(W, 2)
    seqs = sorted(exact)
    code = {s: k for k, s in enumerate(seqs)}
    counts = [0] * len(seqs)
    pair_keys = order[:, 0] * len(W) + order[:, 1]
    for key, c in zip(*torch.unique(pair_keys, return_counts=True), strict=True):
        counts[code[divmod(int(key), len(W))]] += int(c)
    assert chisquare_p(counts, [exact[s] for s in seqs]) > P_MIN


def test_select_is_a_draw_not_top_k():
    miner = HardSampleMiner()
    g = torch.tensor(W).expand(20000, -1)
    indices, mask = miner.select(g, 2, len(W), gen(4))
    drawn = torch.zeros(20000, len(W), dtype=torch.bool).scatter_(1, indices, mask)
    # Top-k would always take samples 0 and 1; a draw sometimes takes the smallest.
    assert drawn[:, 4].any()
    assert not drawn[:, 1].all()


@pytest.mark.parametrize("seed", range(5))
def test_zero_importance_never_drawn_no_duplicates_exact_count(seed):
    miner = HardSampleMiner()
    g0 = torch.Generator().manual_seed(100 + seed)
    c = 1000
    g = torch.rand(c, generator=g0) * (torch.rand(c, generator=g0) < 0.3)  # ~70 % zeros
    g[torch.randint(0, c, (5,), generator=g0)] = float("nan")  # NaN counts as "not > 0"
    n_pos = int((g > 0).sum())
    for size in (256, 512, 1000):
        for b in (0, 1, 17, n_pos, n_pos + 50, size):
            indices, mask = miner.select(g, b, size, g0)
            assert indices.shape == (size,) and mask.shape == (size,)
            assert indices.dtype == torch.int64 and mask.dtype == torch.bool
            assert_layout(indices, mask, c)
            assert int(mask.sum()) == min(b, size, n_pos)
            assert (g[indices[mask]] > 0).all()


def test_select_mask_is_the_first_b_of_the_draw_order():
    miner = HardSampleMiner()
    g = torch.rand(300, generator=gen(5)) + 0.01
    order = miner.draw_order(g, 256, gen(6))
    indices, mask = miner.select(g, 40, 256, gen(6))
    assert torch.equal(indices[mask], torch.sort(order[:40]).values)
    assert_layout(indices, mask, 300)


def test_draw_is_reproducible_with_the_generator():
    miner = HardSampleMiner()
    g = torch.rand(1000, generator=gen(7))
    a = miner.select(g, 100, 512, gen(8))
    b = miner.select(g, 100, 512, gen(8))
    c = miner.select(g, 100, 512, gen(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0][a[1]], c[0][c[1]])


def test_select_by_keys_on_hand_built_keys():
    inf = math.inf
    keys = torch.tensor([0.5, -inf, 2.0, 0.5, 3.0, -inf, 0.5, 1.0])
    # Ranks: 4 (3.0), 2 (2.0), 7 (1.0), then the ties 0, 3, 6 (0.5) by index.
    cases = {
        (0, 4): ([0, 1, 2, 3], 0),
        (1, 4): ([4, 0, 1, 2], 1),
        (3, 5): ([2, 4, 7, 0, 1], 3),
        (4, 5): ([0, 2, 4, 7, 1], 4),  # first of the tied 0.5s, by index
        (5, 8): ([0, 2, 3, 4, 7, 1, 5, 6], 5),
        (7, 8): ([0, 2, 3, 4, 6, 7, 1, 5], 6),  # at most the 6 finite keys
        (3, 3): ([2, 4, 7], 3),
        (5, 3): ([2, 4, 7], 3),  # b above size: size slots, all drawn
    }
    for (b, size), (expected, n_drawn) in cases.items():
        indices, mask = select_by_keys(keys, torch.tensor(b), size)
        assert indices.tolist() == expected, (b, size)
        assert mask.tolist() == [True] * n_drawn + [False] * (size - n_drawn), (b, size)
    with pytest.raises(ValueError, match="size"):
        select_by_keys(keys, 2, 9)


def test_select_by_keys_rows_match_single_rows():
    g0 = gen(40)
    keys = race_keys(torch.rand(7, 50, generator=g0) * (torch.rand(7, 50, generator=g0) < 0.6),
                     g0)
    b = torch.tensor([0, 1, 5, 12, 30, 45, 50])
    indices, mask = select_by_keys(keys, b, 32)
    for row in range(7):
        i1, m1 = select_by_keys(keys[row], b[row], 32)
        assert torch.equal(indices[row], i1) and torch.equal(mask[row], m1)
        finite = int(torch.isfinite(keys[row]).sum())
        assert int(m1.sum()) == min(int(b[row]), 32, finite)
        assert_layout(i1, m1, 50)


# ---------------------------------------------------------------------- tau and b


def test_tau_uniform_is_one_and_leaves_tau_bar():
    miner = HardSampleMiner()
    tau = miner.update_tau(torch.ones(4), torch.tensor(4))
    assert tau.dtype == torch.float64 and float(tau) == 1.0
    assert float(miner.tau_bar) == 1.0


def test_tau_one_hot():
    miner = HardSampleMiner()
    tau = miner.update_tau(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor(4))
    assert float(tau) == pytest.approx(2.0, rel=1e-12)
    assert float(miner.tau_bar) == pytest.approx(1.01, rel=1e-7)
    assert miner.tau_bar.dtype == torch.float32 and miner.tau_bar.dim() == 0


def test_tau_matches_official_expression():
    # Official code: g = G / sum G, tau = (1 - ||g - 1/B||^2 / sum g^2)^(-1/2).
    miner = HardSampleMiner()
    g = torch.rand(1000, generator=gen(11), dtype=torch.float64) ** 4
    p = g / g.sum()
    official = (1 - ((p - 1 / 1000) ** 2).sum() / (p**2).sum()) ** -0.5
    tau = miner.update_tau(g.float(), torch.tensor(1000))
    assert float(tau) == pytest.approx(float(official), rel=1e-6)
    assert float(tau) > 1.0
    assert float(miner.tau_bar) == pytest.approx(0.99 + 0.01 * float(official), rel=1e-6)


def test_tau_bar_update_only_where_tau_above_one():
    miner = with_tau_bar(3.0)
    miner.update_tau(torch.ones(8), torch.tensor(8))  # tau = 1: skipped
    assert float(miner.tau_bar) == 3.0
    miner.update_tau(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor(4))  # tau = 2 < tau_bar
    assert float(miner.tau_bar) == pytest.approx(0.99 * 3.0 + 0.01 * 2.0, rel=1e-7)


def test_tau_counts_zero_importance_samples_in_b_but_not_padding():
    miner = HardSampleMiner()
    grad = torch.zeros(6, 4)
    grad[0, 1] = 3.0  # sample 0 real, samples 1..3 real with G = 0, slots 4, 5 padding
    grad[4:] = 7.0  # garbage in padding slots is ignored
    n = torch.tensor(4)
    g = miner.importance(grad, n)
    assert g.tolist() == [3.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert float(miner.update_tau(g, n)) == pytest.approx(2.0)  # B = 4, not 6


def test_importance_is_row_l2_norm_in_float32():
    miner = HardSampleMiner()
    grad = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float16)
    g = miner.importance(grad)
    assert g.dtype == torch.float32 and g.tolist() == [5.0, 2.0]


@pytest.mark.parametrize(
    ("tau_bar", "expected"),
    [
        (1.0, 500),  # 1000 / 1 clamped at 0.5 B
        (1.5, 500),
        (2.0, 500),
        (2.5, 400),
        (3.0, 333),  # floor(333.3)
        (4.0, 250),
        (19.0, 52),  # floor(52.6)
        (20.0, 50),
        (25.0, 50),  # 40 clamped at 0.05 B
        (1e6, 50),
        (1e30, 50),
    ],
)
def test_hard_batch_size_formula_and_clamps(tau_bar, expected):
    miner = with_tau_bar(tau_bar)
    b = miner.hard_batch_size(torch.tensor(1000), torch.ones(1024))
    assert b.dtype == torch.int64 and b.dim() == 0
    assert int(b) == expected


@pytest.mark.parametrize(
    ("n", "tau_bar", "expected"),
    [
        (1010, 1e6, 50),  # floor(50.5): the official int(max(0.05 B, ...))
        (1010, 1.0, 505),
        (1011, 1.0, 505),  # floor(505.5)
        (60, 1e6, 3),
        (140, 1e6, 7),
        (21, 1e6, 1),
        (19, 1e6, 0),  # floor(0.95)
        (1, 1.0, 0),  # floor(0.5)
        (0, 1.0, 0),
    ],
)
def test_hard_batch_size_rounding(n, tau_bar, expected):
    miner = with_tau_bar(tau_bar)
    assert int(miner.hard_batch_size(torch.tensor(n), torch.ones(2048))) == expected


def test_hard_batch_size_capped_by_nonzero_count():
    miner = HardSampleMiner()
    g = torch.zeros(1000)
    g[:10] = 1.0
    assert int(miner.hard_batch_size(torch.tensor(1000), g)) == 10
    assert int(miner.hard_batch_size(torch.tensor(1000), torch.zeros(1000))) == 0


def test_mine_uses_tau_bar_from_before_the_update():
    miner = with_tau_bar(4.0)
    g = torch.ones(1024)
    g[0] = 1000.0
    g[1000:] = 0.0  # B = 1000 real samples, 24 padding slots
    grad = grads_from_importance(g)
    n = torch.tensor(1000)
    s1, s2 = 999.0 + 1000.0, 999.0 + 1000.0**2
    tau = math.sqrt(1000 * s2) / s1  # ~15.8
    new_tau_bar = 0.99 * 4.0 + 0.01 * tau

    r1 = miner.mine(grad, n, 1024, gen(12))
    assert int(r1.b) == 250  # 1000 / 4: the old tau_bar
    assert float(r1.tau) == pytest.approx(tau, rel=1e-9)
    assert float(miner.tau_bar) == pytest.approx(new_tau_bar, rel=1e-6)
    r2 = miner.mine(grad, n, 1024, gen(13))
    assert int(r2.b) == math.floor(1000 / float(torch.tensor(new_tau_bar, dtype=torch.float32)))
    assert int(r2.b) == 242


def test_mine_selects_exactly_b_nonzero_samples():
    miner = HardSampleMiner()
    g = torch.zeros(2048)
    g[torch.randperm(1500, generator=gen(14))[:700]] = torch.rand(700, generator=gen(15)) + 0.1
    grad = grads_from_importance(g)
    r = miner.mine(grad, torch.tensor(1500), 2048, gen(16))
    assert isinstance(r, MiningResult)
    assert int(r.b) == 700  # 0.5 * 1500 = 750 > 700 nonzero: capped at 700
    assert int(r.mask.sum()) == int(r.b)
    assert (r.importance[r.indices[r.mask]] > 0).all()
    assert_layout(r.indices, r.mask, 2048)
    assert r.indices.shape[0] == miner.buffer_size(2048) == 1024


def test_all_zero_importance_is_empty_and_nan_free():
    miner = HardSampleMiner()
    before = miner.tau_bar.clone()
    for n in (300, 0):
        r = miner.mine(torch.zeros(512, 4), torch.tensor(n), 512, gen(17))
        assert int(r.b) == 0
        assert not r.mask.any()
        assert float(r.tau) == 1.0
        assert torch.equal(miner.tau_bar, before)
        for t in (r.importance, r.tau, miner.tau_bar, miner.sum_fraction, miner.last_fraction):
            assert torch.isfinite(t).all()
        assert_layout(r.indices, r.mask, 512)
        assert not r.injected_grads(torch.zeros(512, 4)).any()
    assert miner.mean_fraction() == 0.0


def test_nan_and_inf_gradients_do_not_poison_tau_bar():
    miner = HardSampleMiner()
    grad = torch.ones(256, 4)
    grad[3, 0] = float("nan")
    r = miner.mine(grad, torch.tensor(256), 256, gen(18))
    assert float(miner.tau_bar) == 1.0  # tau is NaN: no update
    assert not bool((r.indices[r.mask] == 3).any())  # NaN importance is never drawn
    grad[3, 0] = float("inf")
    miner.mine(grad, torch.tensor(256), 256, gen(19))
    assert float(miner.tau_bar) == 1.0


# ---------------------------------------------------------------------- buffer


@pytest.mark.parametrize(
    ("capacity", "tau_bar", "expected"),
    [
        (2**18, 1.0, 131072),  # ceil(0.5 C), already a multiple of 256
        (2**18, 2.5, 104960),  # ceil(104857.6) = 104858 -> 410 * 256
        (2**18, 3.0, 87552),  # ceil(87381.33) = 87382 -> 342 * 256
        (2**18, 1e6, 13312),  # ceil(0.05 C) = ceil(13107.2) = 13108 -> 52 * 256
        (2**18, 20.0, 13312),  # exactly 0.05 C before rounding
        (1000, 1.0, 512),
        (100, 1.0, 100),  # 50 -> 256, but never above the capacity
        (1, 1.0, 1),
        (0, 1.0, 0),
    ],
)
def test_buffer_size(capacity, tau_bar, expected):
    miner = with_tau_bar(tau_bar)
    size = miner.buffer_size(capacity)
    assert isinstance(size, int) and size == expected
    assert size == capacity or size % BUFFER_MULTIPLE == 0


def test_buffer_holds_b_when_host_copy_is_current():
    g0 = gen(20)
    for _ in range(200):
        capacity = int(torch.randint(1, 5000, (1,), generator=g0))
        n = int(torch.randint(0, capacity + 1, (1,), generator=g0))
        tau_bar = float(torch.exp(torch.rand((), generator=g0, dtype=torch.float64) * 5))
        miner = with_tau_bar(tau_bar)
        b = int(miner.hard_batch_size(torch.tensor(n), torch.ones(capacity)))
        assert b <= miner.buffer_size(capacity) <= capacity


def test_buffer_size_follows_tau_bar_after_mine_on_cpu():
    miner = with_tau_bar(3.0)
    assert miner.buffer_size(2**18) == 87552
    g = torch.zeros(2**18)
    g[:1000] = 1.0  # tau = sqrt(2^18 / 1000) ~ 16.2
    miner.mine(grads_from_importance(g), torch.tensor(2**18), 2**18, gen(21))
    expected = math.ceil(2**18 / float(miner.tau_bar))
    assert miner.buffer_size(2**18) == -(-expected // 256) * 256


def test_capacity_larger_than_buffers_is_refused():
    miner = HardSampleMiner()
    with pytest.raises(ValueError, match="capacity"):
        miner.mine(torch.ones(10, 4), torch.tensor(10), 11, gen(0))


# ---------------------------------------------------------------------- state, statistics


def test_state_dict_round_trip_and_continuation():
    miner = HardSampleMiner()
    g0 = gen(22)
    for _ in range(5):
        grad = torch.rand(1024, 4, generator=g0) ** 8
        miner.mine(grad, torch.tensor(1000), 1024, g0)
    sd = miner.state_dict()
    assert set(sd) == {"tau_bar", "steps", "sum_fraction", "last_fraction"}
    assert int(sd["steps"]) == 5 and float(sd["tau_bar"]) > 1.0

    class Holder(nn.Module):  # loaded through a parent, as a trainer checkpoint does
        def __init__(self):
            super().__init__()
            self.miner = HardSampleMiner()

    holder = Holder()
    holder.load_state_dict({f"miner.{k}": v.clone() for k, v in sd.items()})
    other = holder.miner
    for k in sd:
        assert torch.equal(getattr(other, k), getattr(miner, k)), k
    assert other.buffer_size(1024) == miner.buffer_size(1024)
    assert other.mean_fraction() == miner.mean_fraction()

    grad = torch.rand(1024, 4, generator=g0) ** 8
    r1 = miner.mine(grad, torch.tensor(1000), 1024, gen(23))
    r2 = other.mine(grad, torch.tensor(1000), 1024, gen(23))
    assert torch.equal(r1.indices, r2.indices) and torch.equal(r1.mask, r2.mask)
    assert torch.equal(r1.b, r2.b) and torch.equal(miner.tau_bar, other.tau_bar)


def test_mean_fraction_and_last_fraction():
    miner = HardSampleMiner()
    assert miner.mean_fraction() == 0.0
    grad = torch.ones(1024, 4)
    miner.mine(grad, torch.tensor(1000), 1024, gen(24))  # tau_bar 1: b = 500
    g = torch.zeros(1024)
    g[:100] = 1.0
    miner.mine(grads_from_importance(g), torch.tensor(1000), 1024, gen(25))  # b = 100
    assert int(miner.steps) == 2
    assert float(miner.last_fraction) == pytest.approx(0.1)
    assert miner.mean_fraction() == pytest.approx(0.3)


def test_injected_grads_zero_outside_mask():
    miner = HardSampleMiner()
    grad = torch.rand(512, 4, generator=gen(26)) + 0.1
    r = miner.mine(grad, torch.tensor(300), 512, gen(27))  # slots >= 300 are padding
    inj = r.injected_grads(grad, torch.tensor(0.25))
    assert inj.shape == (r.indices.shape[0], 4)
    assert not inj[~r.mask].any()
    assert torch.equal(inj[r.mask], grad[r.indices[r.mask]] * 0.25)
    # A NaN in an undrawn slot does not leak (torch.where, not a multiplication by 0).
    fake = MiningResult(
        indices=torch.tensor([0, 1, 2]),
        mask=torch.tensor([True, False, True]),
        b=torch.tensor(2),
        importance=torch.ones(3),
        tau=torch.tensor(1.0, dtype=torch.float64),
    )
    g3 = torch.ones(3, 4)
    g3[1] = float("nan")
    assert fake.injected_grads(g3).tolist() == [[1.0] * 4, [0.0] * 4, [1.0] * 4]


def test_config_defaults_and_validation():
    cfg = MinerConfig()
    assert (cfg.tau_ema, cfg.min_fraction, cfg.max_fraction, cfg.tau_init) == (
        0.99,
        0.05,
        0.5,
        1.0,
    )
    with pytest.raises(AttributeError):
        cfg.tau_ema = 0.9  # type: ignore[misc]
    for bad in (
        dict(tau_ema=1.0),
        dict(min_fraction=0.6),
        dict(max_fraction=1.5),
        dict(min_fraction=-0.1),
        dict(tau_init=0.5),
        dict(tau_init=float("nan")),
    ):
        with pytest.raises(ConfigError):
            MinerConfig(**bad)


def test_fraction_products_are_rounded_exactly():
    # 0.29 * 100 is 28.999999999999996 in binary and 0.07 * 25600 is 1792.0000000000002;
    # the tolerance makes floor / ceil see 29 and 1792.
    miner = with_tau_bar(1e6, MinerConfig(min_fraction=0.29))
    assert int(miner.hard_batch_size(torch.tensor(100), torch.ones(100))) == 29
    miner = with_tau_bar(1e6, MinerConfig(min_fraction=0.07))
    assert miner.buffer_size(25600) == 1792


def test_custom_fractions():
    miner = with_tau_bar(1.0, MinerConfig(min_fraction=0.1, max_fraction=0.25))
    assert int(miner.hard_batch_size(torch.tensor(1000), torch.ones(1000))) == 250
    miner = with_tau_bar(100.0, MinerConfig(min_fraction=0.1, max_fraction=0.25))
    assert int(miner.hard_batch_size(torch.tensor(1000), torch.ones(1000))) == 100
    assert miner.buffer_size(1000) == 256


# ---------------------------------------------------------------------- no host sync

# Operators that read device memory on the host or produce data-dependent shapes.
_SYNCING_OPS = {
    "aten::_local_scalar_dense",  # .item(), float(t), int(t), bool(t)
    "aten::is_nonzero",
    "aten::equal",
    "aten::nonzero",
    "aten::nonzero_static",
    "aten::masked_select",
    "aten::multinomial",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::repeat_interleave",
    "aten::index_select_backward",
}


class _NoSyncMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.ops.add(name)
        if name in _SYNCING_OPS:
            raise AssertionError(f"host-synchronising op {name} in mine()")
        if name == "aten::index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        ):
            raise AssertionError("boolean-mask indexing (data-dependent shape) in mine()")
        return func(*args, **(kwargs or {}))


def _forbid(*_args, **_kwargs):
    raise AssertionError("host read in mine()")


def test_mine_needs_no_host_synchronisation(monkeypatch):
    miner = with_tau_bar(2.5)
    g0 = gen(28)
    grads = [torch.rand(4096, 4, generator=g0) ** 4 for _ in range(3)] + [torch.zeros(4096, 4)]
    for name in ("item", "tolist", "nonzero", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, _forbid)
    monkeypatch.setattr(torch, "nonzero", _forbid)
    monkeypatch.setattr(torch, "multinomial", _forbid)
    mode = _NoSyncMode()
    with mode:
        results = [miner.mine(grad, torch.tensor(4000), 4096, g0) for grad in grads]
    monkeypatch.undo()
    assert "aten::sort" in mode.ops  # the mode did see the work (the draw sorts its keys)
    assert all(int(r.mask.sum()) == int(r.b) for r in results)
    assert int(results[-1].b) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.filterwarnings("ignore:Synchronization debug mode is a prototype")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mine_on_cuda_without_sync(backend):
    device = torch.device("cuda")
    miner = HardSampleMiner().to(device)
    g0 = torch.Generator(device=device).manual_seed(29)
    capacity = 2**18
    n = torch.tensor(250000, device=device)
    grads = [torch.rand(capacity, 4, device=device, generator=g0) ** 8 for _ in range(4)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        results = [miner.mine(grad, n, capacity, g0, backend=backend) for grad in grads]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    for r in results:
        assert r.indices.is_cuda and r.mask.is_cuda and r.b.is_cuda
        assert int(r.mask.sum()) == int(r.b)
        assert_layout(r.indices.cpu(), r.mask.cpu(), capacity)
    # The pending host copy has landed: the buffer follows tau_bar again.
    expected = max(math.ceil(capacity / float(miner.tau_bar)), math.ceil(0.05 * capacity))
    expected = min(expected, capacity // 2)
    assert miner.buffer_size(capacity) == -(-expected // 256) * 256
