"""Adam as Instant-NGP uses it, as a torch.optim.Optimizer (so GradScaler can drive it).

- L2 regularisation is added to the gradient of the MLP weights (tiny-cuda-nn style, not
  decoupled AdamW); the hash table gets none.
- Table entries whose gradient is exactly zero are skipped: parameter and moments untouched
  (sparse Adam, as instant-ngp does), in every backend.
- ``step(skip=...)`` takes an optional 0-dim bool device tensor: where it is True the whole
  update is discarded without a host synchronisation (a mining step that selected nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nerfmine.ops.adam import adam_step


@dataclass(frozen=True)
class OptimConfig:
    """Adam, its learning-rate schedule and the EMA of the weights; defaults are instant-ngp's
    except ``l2_reg`` (see its note)."""

    lr: float = 1e-2
    """Adam learning rate (instant-ngp)."""
    betas: tuple[float, float] = (0.9, 0.99)
    """Adam betas (instant-ngp)."""
    eps: float = 1e-15
    """Adam epsilon (instant-ngp)."""
    l2_reg: float = 0.0
    """L2 regularisation added to the gradients of the MLP weights only (tiny-cuda-nn style).

    instant-ngp uses 1e-6 with its own loss normalisation; with ours (the mean over RGB and
    over rays, hard-sample-mining.md's l_r) it cost test PSNR on lego_400 (BENCHMARKS.md,
    "What moves lego_400 quality"), so it is off by default."""
    lr_milestones: tuple[float, ...] = (0.4, 0.6, 0.8)
    """Fractions of the budget at which the learning rate is multiplied by lr_gamma.

    instant-ngp decays by 0.33 at step 20k and every 10k after, for a ~50k-step (5-minute) run:
    0.4, 0.6 and 0.8 of the budget. A budget in seconds measures the fraction on the training
    clock, so a fast run keeps the same shape of schedule."""
    lr_gamma: float = 0.33
    """Learning-rate factor at each milestone."""
    ema_decay: float = 0.95
    """Decay of the exponential moving average of the weights used for evaluation."""

    def lr_at(self, fraction: float) -> float:
        """The learning rate at ``fraction`` of the budget (the step schedule above)."""
        passed = sum(1 for m in self.lr_milestones if fraction >= m)
        return self.lr * self.lr_gamma**passed


class NGPAdam(torch.optim.Optimizer):
    def __init__(
        self,
        table_params: list[torch.nn.Parameter],
        mlp_params: list[torch.nn.Parameter],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-15,
        l2_reg: float = 1e-6,
        backend: str = "torch",
    ):
        groups = [
            {"params": list(table_params), "l2": 0.0, "skip_zero_grad": True},
            {"params": list(mlp_params), "l2": l2_reg, "skip_zero_grad": False},
        ]
        super().__init__(groups, dict(lr=lr, betas=betas, eps=eps, backend=backend))
        self._fp16_copies: dict[torch.nn.Parameter, torch.Tensor] = {}

    def set_fp16_copy(self, param: torch.nn.Parameter, copy: torch.Tensor) -> None:
        """Keep ``copy`` (fp16, ``param``'s shape, in sync now) in sync with ``param``: every
        step writes the elements it updates into it (the hash table's lookup copy)."""
        if copy.shape != param.shape or copy.dtype != torch.float16:
            raise ValueError(f"the fp16 copy must be float16 of shape {list(param.shape)}, got "
                             f"{copy.dtype} {list(copy.shape)}")
        self._fp16_copies[param] = copy

    @torch.no_grad()
    def init_state(self) -> None:
        """Allocate the moments now (part of the model's setup, not of a training step)."""
        for group in self.param_groups:
            for param in group["params"]:
                self._state_of(param)

    def _state_of(self, param: torch.nn.Parameter) -> dict:
        state = self.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        return state

    @torch.no_grad()
    def step(self, closure=None, skip: torch.Tensor | None = None):  # noqa: D102
        if closure is not None:
            raise ValueError("NGPAdam does not take a closure")
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self._state_of(param)
                # A skipped step (device flag) is discarded inside the Adam kernel: nothing is
                # written and the step count does not move. No copies, no host read.
                if skip is None:
                    state["step"].add_(1)
                else:
                    state["step"].add_(skip.logical_not())
                adam_step(
                    param, param.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                    lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                    weight_decay_l2=group["l2"], skip_zero_grad=group["skip_zero_grad"],
                    param_fp16=self._fp16_copies.get(param), backend=group["backend"],
                    skip=skip,
                )
        return None


class DeviceLossScaler:
    """Dynamic fp16 loss scaling that never synchronises with the host.

    torch.amp.GradScaler reads its inf/NaN flag on the host at every step; here the flag stays
    on the device and becomes the optimizer's ``skip`` tensor, and the scale's backoff and growth
    use the same in-place kernels GradScaler uses (factor 2 growth every 2000 clean steps, 0.5
    backoff on inf/NaN). Disabled, it scales nothing but still flags non-finite gradients.
    """

    def __init__(self, device: torch.device, enabled: bool = True, init_scale: float = 2.0**16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.enabled = enabled
        self.scale = torch.full((), init_scale, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.growth_factor = growth_factor
        self.backoff_factor = backoff_factor
        self.growth_interval = growth_interval

    def scale_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * self.scale.to(tensor.dtype) if self.enabled else tensor

    def unscale_(self, params: list[torch.nn.Parameter]) -> torch.Tensor:
        """Divide the gradients by the scale in place (enabled) and return the flag of a
        non-finite gradient value ([] bool), which the step's ``skip`` includes. Disabled, the
        gradients are only checked (a NaN or inf from any cause skips the step instead of
        reaching the weights)."""
        grads = [p.grad for p in params if p.grad is not None]
        found_inf = torch.zeros((), dtype=torch.float32, device=self.scale.device)
        inv_scale = (1.0 / self.scale if self.enabled
                     else torch.ones((), dtype=torch.float32, device=self.scale.device))
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
        return found_inf > 0

    def update(self, found_inf: torch.Tensor | None) -> None:
        if not self.enabled or found_inf is None:
            return
        torch._amp_update_scale_(self.scale, self.growth_tracker, found_inf.float(),
                                 self.growth_factor, self.backoff_factor, self.growth_interval)

    def state_dict(self) -> dict:
        return {"scale": self.scale.clone(), "growth_tracker": self.growth_tracker.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.scale.copy_(state["scale"])
        self.growth_tracker.copy_(state["growth_tracker"])
