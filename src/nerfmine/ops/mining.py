"""Hard sample mining's draw: importance, the exponential race and the selection of b samples.

Specified in ../shared/docs/hard-sample-mining.md (steps 5 and 6). Two calls, so that the
miner can choose ``b`` from the sums of the first while the second is still to run:

1. :func:`race` takes the output gradients ``grad_raw`` [C, K] of the first pass (K = 4 for
   NeRF's RGB and density, 3 for an image's RGB, 1 for an SDF's distance) and returns
   the importance ``G_i = ||grad_raw_i||_2`` (0 on padding slots ``i >= n_samples``), its sums
   ``sum G`` and ``sum G^2`` (float64), the count of candidates ``#{G > 0}`` and the keys of an
   exponential race, ``key_i = log G_i - log E_i`` with ``E_i ~ Exp(1)`` (successive sampling
   without replacement proportional to G is the order of decreasing keys);
2. :func:`select` draws the ``b`` largest keys into a buffer of ``size`` slots: the drawn
   samples ascending, then the lowest undrawn slots ascending as padding.

``backend="torch"`` is the reference: :func:`importance`, :func:`race_keys` and
:func:`select_by_keys` (which sorts the keys). ``backend="triton"``
(:mod:`nerfmine.ops._triton.mining`) computes the same quantities in one kernel and finds the
``b``-th largest key by a radix select, without a sort; its random stream is Philox, so it
draws another sample of the same law. Neither reads a device value on the host: ``b`` is a
device tensor, ``size`` a host int.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from nerfmine.ops.backends import check_backend, triton_module


@dataclass
class Race:
    """The outcome of :func:`race`, input of :func:`select`. All tensors on the device."""

    importance: Tensor  # [C] float32, G (0 on padding, terminated samples and NaN rows)
    sum_importance: Tensor  # [] float64, sum G
    sum_importance_sq: Tensor  # [] float64, sum G^2
    n_candidates: Tensor  # [] int64, #{G > 0}: the samples a draw can take
    backend: str = "torch"
    keys: Tensor | None = None  # torch: [C] float32 race keys (-inf: not drawable)
    workspace: Any = None  # triton: the kernels' key codes and histograms


def importance(grad_raw: Tensor, n_samples: Tensor | int | None = None) -> Tensor:
    """G_i = L2 norm of the 4 output gradients of sample i, in float32 (computed in float64,
    so that the squares of tiny gradients cannot underflow to a G of 0). # [C]

    With ``n_samples`` given, slots ``>= n_samples`` (padding) get 0 whatever ``grad_raw``
    holds there."""
    g = torch.linalg.vector_norm(grad_raw.double(), dim=-1).float()  # [C]
    if n_samples is not None:
        n = torch.as_tensor(n_samples, device=g.device)
        slot = torch.arange(g.shape[-1], device=g.device)  # [C]
        g = torch.where(slot < n, g, torch.zeros_like(g))
    return g


def race_keys(importance: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Keys of the exponential race: ``log G_i - log E_i``, E_i ~ Exp(1) i.i.d. (clamped to
    the smallest normal float), ``-inf`` where ``G_i`` is not > 0 (0 or NaN). # like G"""
    g = importance.float()
    e = torch.empty_like(g).exponential_(generator=generator)  # [..., C]
    e = e.clamp_min_(torch.finfo(e.dtype).tiny)  # E = 0 would give key +inf
    valid = g > 0  # False for 0 and NaN
    safe_g = torch.where(valid, g, torch.ones_like(g))
    return torch.where(valid, torch.log(safe_g) - torch.log(e), torch.full_like(g, -math.inf))


def select_by_keys(keys: Tensor, b: Tensor | int, size: int) -> tuple[Tensor, Tensor]:
    """The ``b`` largest finite keys (ties: lower index first) and padding, in ``size`` slots.

    ``keys`` [..., C] (``-inf``: not drawable), ``b`` an int or a tensor broadcast over the
    leading dims, ``size <= C``. Returns ``(indices [..., size] int64, mask [..., size] bool)``:
    the ``d = min(b, size, #finite)`` drawn indices in ascending order, then the lowest undrawn
    indices in ascending order; ``mask`` is True on the first ``d`` slots. The pure-PyTorch
    reference of the Triton selection.
    """
    c = keys.shape[-1]
    if not 0 <= size <= c:
        raise ValueError(f"size must lie in [0, {c}], got {size}")
    device = keys.device
    order = torch.sort(keys, dim=-1, descending=True, stable=True).indices  # [..., C]
    rank = torch.arange(c, device=device)  # [C]
    b_t = torch.as_tensor(b, device=device).clamp(max=size).unsqueeze(-1)  # the top `size`
    take = (rank < b_t) & (torch.gather(keys, -1, order) > -math.inf)  # [..., C] by rank
    drawn = torch.zeros_like(take).scatter_(-1, order, take)  # [..., C] by index
    d = drawn.long()
    before = d.cumsum(-1) - d  # drawn slots before each index
    n_drawn = d.sum(-1, keepdim=True)  # [..., 1]
    pos = torch.where(drawn, before, n_drawn + rank - before)
    pos = torch.where(pos < size, pos, torch.full_like(pos, size))  # column `size`: discarded
    out = torch.zeros(*keys.shape[:-1], size + 1, dtype=torch.int64, device=device)
    out.scatter_(-1, pos, rank.expand_as(pos))
    mask = torch.arange(size, device=device) < n_drawn
    return out[..., :size], mask


def race(grad_raw: Tensor, n_samples: Tensor | int, generator: torch.Generator | None = None,
         backend: str = "torch") -> Race:
    """Importance, its sums and the race keys of the output gradients ``grad_raw`` [C, K],
    K <= 4, of the real samples ``i < n_samples`` (a [] device tensor or an int). ``generator``
    draws the race's randomness (the torch backend's exponentials, the triton backend's Philox
    seed). The triton kernel reads four values a row: narrower gradients are padded with zero
    columns for it, which leave every norm G unchanged."""
    check_backend("mining race", backend)
    if grad_raw.dim() != 2 or not 1 <= grad_raw.shape[1] <= 4:
        raise ValueError(f"grad_raw must be [C, K] with 1 <= K <= 4, got "
                         f"{list(grad_raw.shape)}")
    device = grad_raw.device
    n = torch.as_tensor(n_samples, device=device)
    if backend == "triton":
        if grad_raw.shape[1] < 4:  # [C, K] -> [C, 4]
            grad_raw = torch.nn.functional.pad(grad_raw, (0, 4 - grad_raw.shape[1]))
        kernels = triton_module("mining", grad_raw)
        ws = kernels.MineWorkspace(grad_raw.shape[0], device)
        seed = torch.randint(0, 2**31 - 1, (1,), device=device, generator=generator)
        g, partial = kernels.importance_and_keys(grad_raw, n, seed, ws)  # [C], [blocks, 3]
        sums = partial.sum(dim=0)  # [3] float64: sum G, sum G^2, #{G > 0}
        return Race(importance=g, sum_importance=sums[0], sum_importance_sq=sums[1],
                    n_candidates=sums[2].to(torch.int64), backend=backend, workspace=ws)
    g = importance(grad_raw, n)  # [C]
    g64 = g.to(torch.float64)
    return Race(importance=g, sum_importance=g64.sum(), sum_importance_sq=(g64 * g64).sum(),
                n_candidates=(g > 0).sum(), backend=backend, keys=race_keys(g, generator))


def select(drawing: Race, b: Tensor, size: int) -> Tensor:
    """The ``size`` slots of the second pass (int64 [size]): the ``b`` drawn samples (``b`` a
    [] device tensor, at most ``size`` and ``n_candidates``) ascending, then padding."""
    if drawing.backend == "triton":
        kernels = triton_module("mining", drawing.importance)
        return kernels.select_drawn(b, size, drawing.workspace)
    assert drawing.keys is not None
    return select_by_keys(drawing.keys, b, size)[0]
