"""Online hard sample mining (Korhonen et al., ECCV 2024), without host synchronisation.

The method is specified in ``docs/hard-sample-mining.md`` (steps 5 to 7). In one training step
the trainer computes the output gradients ``grad_raw`` [C, 4] of every sample (first pass, no
graph), then calls :meth:`HardSampleMiner.mine`, which

1. takes the importance ``G_i = ||grad_raw_i||_2`` of every sample (padding slots get 0);
2. computes the hard batch size ``b`` on the device from ``tau_bar`` *as it stood before this
   step* (a documented one-step lag, see below);
3. draws ``b`` distinct samples by successive sampling without replacement, with probability
   proportional to ``G`` (exponential race / Gumbel top-k, not a deterministic top-k of ``G``),
   into a fixed-size buffer whose size is a host int derived from a lagged host copy of
   ``tau_bar`` (drawn samples first, ascending; then padding). The draw is the op
   :mod:`nerfmine.ops.mining` (its torch reference sorts the race's keys; its Triton kernels
   find the ``b``-th largest key by a radix select and compact, without a sort);
4. updates ``tau_bar`` with this step's ``tau`` (EMA, only where ``tau > 1``);
5. records ``b / B`` statistics and issues a non-blocking copy of ``tau_bar`` to the host.

Nothing in :meth:`~HardSampleMiner.mine` reads a device value on the host: no ``.item()``, no
``nonzero()``, no ``torch.multinomial`` and no data-dependent shapes. The only host value is
the buffer size, which comes from the host copy of ``tau_bar`` made in an earlier step.

Formulas and rounding (B = number of real samples, a device tensor)::

    p_i     = G_i / sum_j G_j
    tau     = sqrt(B * sum_i p_i^2)   (= RMS(G) / mean(G) >= 1; computed in float64)
    tau_bar <- ema * tau_bar + (1 - ema) * tau   only where tau > 1 (and finite)
    b       = floor(clamp(B / tau_bar_prev, min_fraction * B, max_fraction * B))
            = clamp(floor(B / tau_bar_prev), floor(min_fraction * B), floor(max_fraction * B))
    b       = min(b, #{i : G_i > 0}, buffer size)

``b`` is exactly the official code's ``int(max(B * 0.05, min(B * 0.5, B / tau)))``: ``floor``
is monotone, so flooring the clamped value equals clamping the floors, the bounds can never
cross, and ``b <= max_fraction * B`` always holds (the second pass is never larger than half the
first). The price is that ``b`` may fall one sample below ``min_fraction * B`` when that is not
an integer (and is 0 for B < 20 with the default 5 %), exactly as in the official code.

The host buffer size is::

    S = clamp(ceil(capacity / tau_bar_host), ceil(min_fraction * capacity),
              ceil(max_fraction * capacity))
    S = min(256 * ceil(S / 256), capacity)

When ``tau_bar_host`` equals the ``tau_bar`` the device uses for ``b`` (always on CPU; on CUDA
whenever the previous step's copy has landed), ``S >= b`` holds because ``B <= capacity``; if a
stale host copy ever makes ``S < b``, ``b`` is capped at ``S`` (it can be at most ~1 % per step
of staleness short, since ``tau_bar`` shrinks by at most a factor ``ema`` per step).

Products such as ``min_fraction * B`` are rounded with a relative tolerance of 1e-12 so that
binary rounding cannot move them across an integer (``0.29 * 100`` is 28.999999999999996 in
float64 and floors to 29 here; ``0.07 * 25600`` is 1792.0000000000002 and ceils to 1792).

The one-step lag: ``b`` of step t uses ``tau_bar`` after step t-1's update, i.e. it does not
yet include this step's ``tau``. The official code updates first and then uses the new value.
With ``ema = 0.99`` one step moves ``tau_bar`` by at most 1 % of ``tau - tau_bar``, so the lag
changes ``b`` by a fraction of a percent; in exchange ``b`` can be computed while ``tau`` is
still being reduced, and the step needs no host round trip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from nerfmine.errors import ConfigError
from nerfmine.lagged import LaggedHostValue
from nerfmine.ops import mining

__all__ = ["HardSampleMiner", "MinerConfig", "MiningResult", "BUFFER_MULTIPLE"]

#: The buffer size of the second pass is rounded up to a multiple of this (kernel-friendly
#: shapes, and fewer distinct shapes for allocator caching / compilation).
BUFFER_MULTIPLE = 256

# Relative tolerance for floor/ceil of products of a fraction and a count (see module doc).
_ROUND_TOL = 1e-12


@dataclass(frozen=True)
class MinerConfig:
    """Hyper-parameters of online hard sample mining. Defaults are the paper's."""

    tau_ema: float = 0.99
    """Decay of the exponential moving average of tau: ``tau_bar <- tau_ema * tau_bar +
    (1 - tau_ema) * tau``. 0.99 in the paper and the official code (``nokia/ashawkey-torch-ngp``,
    ``nerf/renderer.py``: ``self.tau = 0.99*self.tau + 0.01*tau``)."""

    min_fraction: float = 0.05
    """Lower bound of the hard batch, as a fraction of B: ``b >= floor(min_fraction * B)``.
    0.05 in the official code (``max(B*0.05, ...)``); also bounds the buffer from below."""

    max_fraction: float = 0.5
    """Upper bound of the hard batch, as a fraction of B: ``b <= floor(max_fraction * B)``.
    0.5 in the official code (``min(B*0.5, b)``), so the graph pass is at most half the samples."""

    tau_init: float = 1.0
    """Initial ``tau_bar``. 1.0 in the official code (``self.tau = 1.0``): with it, the first
    steps mine ``max_fraction * B`` samples until ``tau_bar`` exceeds ``1 / max_fraction``."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau_ema < 1.0:
            raise ConfigError(f"MinerConfig.tau_ema must lie in [0, 1), got {self.tau_ema}.")
        if not 0.0 <= self.min_fraction <= self.max_fraction <= 1.0:
            raise ConfigError(
                "MinerConfig needs 0 <= min_fraction <= max_fraction <= 1, got "
                f"min_fraction={self.min_fraction}, max_fraction={self.max_fraction}."
            )
        if not (math.isfinite(self.tau_init) and self.tau_init >= 1.0):
            raise ConfigError(
                f"MinerConfig.tau_init must be a finite number >= 1 (tau >= 1 always), "
                f"got {self.tau_init}."
            )


@dataclass
class MiningResult:
    """What :meth:`HardSampleMiner.mine` hands to the second pass. All tensors on device.

    ``indices`` holds ``S`` distinct sample indices: first the ``b`` drawn samples in
    ascending order (memory locality), then the lowest-numbered undrawn slots, also ascending,
    as padding up to the fixed size; ``mask`` is True on the first ``b`` slots. Every index is
    valid and distinct; the trainer still runs the second pass on the padding (fixed shape)
    but must inject a zero gradient there, e.g. with :meth:`injected_grads`.
    """

    indices: torch.Tensor  # [S] int64, distinct, in [0, C); drawn part and padding ascending
    mask: torch.Tensor  # [S] bool, True for the b drawn samples (the first b slots)
    b: torch.Tensor  # [] int64, number of drawn samples
    importance: torch.Tensor  # [C] float32, G (0 for padding and terminated samples)
    tau: torch.Tensor  # [] float64, this step's tau (1 when every G is 0), for logging

    def injected_grads(
        self, grad_raw: torch.Tensor, scale: torch.Tensor | float = 1.0
    ) -> torch.Tensor:
        """Output gradients to inject in the second pass: ``grad_raw[indices] * scale`` on
        drawn slots, exactly 0 on the others (``torch.where``, so no NaN can leak in).

        ``scale`` is the baseline's loss scale, ``1 / max(1, n_valid_rays)`` (docs/design.md).
        """
        g = grad_raw[self.indices] * scale  # [S, 4]
        return torch.where(self.mask.unsqueeze(-1), g, torch.zeros_like(g))


class HardSampleMiner(nn.Module):
    """Strategy object for online hard sample mining; state lives in buffers.

    Buffers (checkpointed through ``state_dict``):

    - ``tau_bar`` [] float32: EMA of tau, starts at ``config.tau_init``.
    - ``steps`` [] int64: number of :meth:`mine` calls.
    - ``sum_fraction`` [] float64: running sum of ``b / max(1, B)`` (for the mean b/B).
    - ``last_fraction`` [] float64: ``b / max(1, B)`` of the last step.

    Hooks, in the order :meth:`mine` calls them: :meth:`importance`, :meth:`hard_batch_size`
    (old ``tau_bar``), :meth:`buffer_size` (host, lagged), :meth:`select`, :meth:`update_tau`.

    Besides the buffers, the module keeps a host copy of ``tau_bar`` for :meth:`buffer_size`
    (a :class:`~nerfmine.lagged.LaggedHostValue`; a cache, not state: it is refreshed on
    ``load_state_dict`` and by :meth:`refresh_host_copy`). Its copy is issued at the end of each
    :meth:`mine` (or by the caller after a graph replay, :meth:`issue_host_copy`) and picked up
    by a later :meth:`buffer_size` once it has landed; on a CPU it is read directly.
    """

    tau_bar: torch.Tensor
    steps: torch.Tensor
    sum_fraction: torch.Tensor
    last_fraction: torch.Tensor

    def __init__(self, config: MinerConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MinerConfig()
        self.register_buffer("tau_bar", torch.tensor(self.config.tau_init, dtype=torch.float32))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("sum_fraction", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("last_fraction", torch.tensor(0.0, dtype=torch.float64))
        self._host_tau = LaggedHostValue(float(self.config.tau_init), torch.float32)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    # ------------------------------------------------------------------ hooks

    @torch.no_grad()
    def importance(
        self, grad_raw: torch.Tensor, n_samples: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """G_i, the L2 norm of sample i's output gradients (:func:`nerfmine.ops.mining.importance`;
        0 on padding slots ``>= n_samples`` when it is given). ``grad_raw`` [C, 4] -> [C]."""
        return mining.importance(grad_raw, n_samples)

    @torch.no_grad()
    def hard_batch_size(
        self, n_samples: torch.Tensor | int, importance: torch.Tensor
    ) -> torch.Tensor:
        """b = clamp(floor(B / tau_bar), floor(min_fraction B), floor(max_fraction B)),
        then ``min(b, #{G > 0})``; a 0-dim int64 tensor on the importance's device.

        Uses ``tau_bar`` as it is now: called before :meth:`update_tau`, that is the value
        from before this step's update (the one-step lag of the module doc).
        """
        return self._hard_batch_size(n_samples, (importance > 0).sum())

    def _hard_batch_size(self, n_samples: torch.Tensor | int,
                         n_nonzero: torch.Tensor) -> torch.Tensor:
        """:meth:`hard_batch_size` given the count of samples with G > 0 ([] int64)."""
        device = n_nonzero.device
        bf = torch.as_tensor(n_samples, device=device).to(torch.float64)  # []
        tau_bar = self.tau_bar.to(device=device, dtype=torch.float64)  # []
        lo = _floor(self.config.min_fraction * bf)
        hi = _floor(self.config.max_fraction * bf)
        b = torch.minimum(torch.maximum(torch.floor(bf / tau_bar), lo), hi)
        return torch.minimum(b.to(torch.int64), n_nonzero)

    @torch.no_grad()
    def update_tau(self, importance: torch.Tensor, n_samples: torch.Tensor | int) -> torch.Tensor:
        """tau = sqrt(B sum_i p_i^2) = sqrt(B sum G^2) / sum G; ``tau_bar`` moves towards it
        by ``1 - tau_ema`` only where tau > 1 (and finite). Returns tau ([] float64).

        When every G is 0 (or B is 0) tau is reported as 1 and ``tau_bar`` is unchanged; no
        NaN is formed. ``importance`` must be 0 on padding slots (as :meth:`importance` with
        ``n_samples`` makes it), so the sums run over the B real samples.
        """
        g = importance.to(torch.float64)  # [C]
        return self._update_tau(g.sum(), (g * g).sum(), n_samples)

    def _update_tau(self, s1: torch.Tensor, s2: torch.Tensor,
                    n_samples: torch.Tensor | int) -> torch.Tensor:
        """:meth:`update_tau` given ``s1 = sum G`` and ``s2 = sum G^2`` ([] float64)."""
        bf = torch.as_tensor(n_samples, device=s1.device).to(torch.float64)  # []
        ok = s1 > 0
        tau = torch.sqrt(bf * s2) / torch.where(ok, s1, torch.ones_like(s1))
        tau = torch.where(ok, tau, torch.ones_like(tau))  # [] float64
        ema = self.config.tau_ema
        old = self.tau_bar.to(torch.float64)
        new = ema * old + (1.0 - ema) * tau.to(old.device)
        update = (tau > 1.0) & torch.isfinite(tau)
        self.tau_bar.copy_(torch.where(update.to(old.device), new, old))
        return tau

    def buffer_size(self, capacity: int, multiple: int = BUFFER_MULTIPLE) -> int:
        """Host size S of the second-pass buffer, from the lagged host copy of ``tau_bar``:
        ``clamp(ceil(capacity / tau_bar_host), ceil(min_fraction capacity),
        ceil(max_fraction capacity))`` rounded up to a multiple of ``multiple`` (256 by
        default; a CUDA-graph step uses coarser buckets so that few graphs are captured), at
        most ``capacity``.
        """
        capacity = int(capacity)
        if capacity <= 0:
            return 0
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        cfg = self.config
        size = _ceil_host(capacity / self._host_tau.value)
        size = max(size, _ceil_host(cfg.min_fraction * capacity))
        size = min(size, _ceil_host(cfg.max_fraction * capacity))
        size = -(-size // multiple) * multiple
        return min(size, capacity)

    @torch.no_grad()
    def draw_order(
        self, importance: torch.Tensor, size: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The first ``size`` entries of a successive sampling without replacement
        proportional to ``importance``, in draw order ([..., size] int64, along the last dim).

        Exponential race: key_i = log G_i - log E_i with E_i ~ Exp(1) i.i.d. (equivalently
        G_i / E_i, or log G_i + Gumbel), ``key = -inf`` where ``G_i`` is not > 0; the order
        of decreasing keys is distributed as successive draws with probabilities
        proportional to G among the remaining samples. Entries whose G is 0 come last (in
        arbitrary order) and are never part of a draw; :meth:`select` masks them.
        """
        keys = mining.race_keys(importance, generator)
        return torch.sort(keys, dim=-1, descending=True, stable=True).indices[..., :size]

    @torch.no_grad()
    def select(
        self,
        importance: torch.Tensor,
        b: torch.Tensor | int,
        size: int,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``b`` samples (successive sampling without replacement, proportional to G)
        into a buffer of ``size`` slots.

        Returns ``(indices [size] int64, mask [size] bool)`` laid out as
        :func:`nerfmine.ops.mining.select_by_keys` describes: the first ``b`` of
        :meth:`draw_order` that have G > 0 (exactly ``min(b, size, #{G > 0})`` of them),
        ascending, then padding. Leading
        batch dims of ``importance`` are allowed (one independent draw per row, ``b``
        broadcast over rows).
        """
        return mining.select_by_keys(mining.race_keys(importance, generator), b, size)

    @torch.no_grad()
    def mine(
        self,
        grad_raw: torch.Tensor,
        n_samples: torch.Tensor | int,
        capacity: int | None = None,
        generator: torch.Generator | None = None,
        size: int | None = None,
        host_copy: bool = True,
        backend: str = "torch",
    ) -> MiningResult:
        """One mining step on the output gradients ``grad_raw`` [C, K] of the first pass (K = 4
        for NeRF, 3 for an image's RGB, 1 for an SDF's distance; :func:`nerfmine.ops.mining.race`).

        ``n_samples`` is ``PackedSamples.n_samples`` (B, [] int64 on device); ``capacity`` the
        host capacity C (defaults to ``grad_raw.shape[0]``); ``generator`` a
        ``torch.Generator`` on ``grad_raw``'s device, for a reproducible draw. Needs no host
        synchronisation. ``size`` overrides :meth:`buffer_size` (a caller that captures the
        step in a CUDA graph picks it before the capture); ``host_copy=False`` leaves the host
        copy of ``tau_bar`` to the caller (:meth:`issue_host_copy` after the graph's replay:
        event records and host copies cannot be captured). ``backend`` is the backend of the
        draw, :mod:`nerfmine.ops.mining` (triton: no sort; the same law, another random stream).
        """
        n_slots = grad_raw.shape[0]
        capacity = n_slots if capacity is None else int(capacity)
        if capacity > n_slots:
            raise ValueError(f"capacity {capacity} exceeds the {n_slots} rows of grad_raw")
        device = grad_raw.device
        n = torch.as_tensor(n_samples, device=device)

        if size is None:
            size = self.buffer_size(capacity)  # host int, lagged
        size = min(int(size), n_slots)
        drawing = mining.race(grad_raw, n, generator, backend)  # G, its sums, the race's keys
        # b from tau_bar before this step's update (the one-step lag of the module doc).
        b = self._hard_batch_size(n, drawing.n_candidates).clamp(max=size)  # []
        indices = mining.select(drawing, b, size)  # [S]: drawn samples first, then padding
        mask = torch.arange(size, device=device) < b  # [S]
        tau = self._update_tau(drawing.sum_importance, drawing.sum_importance_sq, n)
        g = drawing.importance

        fraction = b.to(torch.float64) / n.to(torch.float64).clamp_min(1.0)  # []
        self.steps.add_(1)
        self.sum_fraction.add_(fraction.to(self.sum_fraction.device))
        self.last_fraction.copy_(fraction)
        if host_copy:
            self.issue_host_copy()
        return MiningResult(indices=indices, mask=mask, b=b, importance=g, tau=tau)

    # ------------------------------------------------------------------ host side

    def mean_fraction(self) -> float:
        """Mean of b / B over all :meth:`mine` calls (host read: for logging only)."""
        steps = int(self.steps.item())
        return float(self.sum_fraction.item()) / steps if steps > 0 else 0.0

    def refresh_host_copy(self) -> None:
        """Read ``tau_bar`` into the host copy now (synchronises once). Called after
        ``load_state_dict``; call it yourself after writing ``tau_bar`` by hand."""
        self._host_tau.reset(float(self.tau_bar.detach().cpu()))

    def issue_host_copy(self) -> None:
        """Start the (non-blocking) copy of ``tau_bar`` to the host for :meth:`buffer_size`."""
        self._host_tau.issue(self.tau_bar)

    def extra_repr(self) -> str:
        return f"config={self.config}"


def _refresh_after_load(module: nn.Module, incompatible_keys: object) -> None:
    assert isinstance(module, HardSampleMiner)
    module.refresh_host_copy()


def _floor(x: torch.Tensor) -> torch.Tensor:
    """floor with a relative tolerance, for products of a decimal fraction and a count."""
    return torch.floor(x * (1.0 + _ROUND_TOL))


def _ceil_host(x: float) -> int:
    """ceil with a relative tolerance (host), e.g. ceil(0.05 * 2**18) = 13108."""
    return int(math.ceil(x * (1.0 - _ROUND_TOL)))
