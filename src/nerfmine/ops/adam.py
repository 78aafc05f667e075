"""One Adam step over a flat fp32 parameter, tiny-cuda-nn style.

Semantics (shared by both backends):

* ``g = grad + weight_decay_l2 * param`` -- L2 regularisation is added to the gradient *before*
  the moments (tcnn / classic ``torch.optim.Adam(weight_decay=...)``), not decoupled (AdamW).
* ``m = beta1 m + (1 - beta1) g``; ``v = beta2 v + (1 - beta2) g^2``;
  ``param -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)`` (torch's formulation),
  where ``t = step`` counts this update (1 for the first update: increment before calling).
* ``skip_zero_grad``: where the raw ``grad`` is exactly 0 the element is left completely untouched
  (param and both moments), as instant-ngp's sparse Adam on hash-grid tables.
* ``param_fp16``: an fp16 copy of ``param`` that is in sync before the call; the updated
  elements are written to it (``param.half()``), so it stays in sync: the fp16 lookup copy of a
  hash table kept for free. Under ``skip_zero_grad`` untouched elements are not written.

* ``skip``: a 0-dim bool device tensor; where it is True nothing at all is written (a step
  discarded without a host synchronisation).

``step`` may be a Python int or a 0-dim tensor on the parameter's device (no host sync); so may
``lr`` (a 0-dim float32 tensor), which lets a captured CUDA graph follow a learning-rate schedule.
All tensors are updated in place.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from nerfmine.ops.backends import check_backend, triton_module


def _bias_corrections(step: int | Tensor, beta1: float, beta2: float, like: Tensor):
    if isinstance(step, Tensor):
        t = step.to(device=like.device, dtype=torch.float32)
        bc1 = 1.0 - torch.pow(torch.tensor(beta1, device=like.device), t)
        bc2 = 1.0 - torch.pow(torch.tensor(beta2, device=like.device), t)
        return bc1, bc2.sqrt()
    if step < 1:
        raise ValueError(f"adam step must count this update (>= 1), got {step}")
    return 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)


def adam_step_torch(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int | Tensor,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.99,
    eps: float = 1e-15,
    weight_decay_l2: float = 0.0,
    skip_zero_grad: bool = False,
    param_fp16: Tensor | None = None,
    skip: Tensor | None = None,
) -> None:
    """Pure-PyTorch reference of :func:`adam_step` (in place)."""
    g = grad.float()
    if weight_decay_l2 != 0.0:
        g = g + weight_decay_l2 * param
    m = exp_avg * beta1 + (1.0 - beta1) * g
    v = exp_avg_sq * beta2 + (1.0 - beta2) * (g * g)
    bc1, bc2_sqrt = _bias_corrections(step, beta1, beta2, param)
    denom = v.sqrt() / bc2_sqrt + eps
    if isinstance(lr, Tensor):
        lr = lr.to(device=param.device, dtype=torch.float32)
    new_param = param - (lr / bc1) * m / denom
    keep = None
    if skip_zero_grad:
        keep = grad == 0
    if skip is not None:
        skip = skip.to(device=param.device, dtype=torch.bool)
        keep = skip if keep is None else keep | skip
    if keep is not None:
        m = torch.where(keep, exp_avg, m)
        v = torch.where(keep, exp_avg_sq, v)
        new_param = torch.where(keep, param, new_param)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    param.copy_(new_param)
    if param_fp16 is not None:
        if keep is not None:
            param_fp16.copy_(torch.where(keep, param_fp16, param.half()))
        else:
            param_fp16.copy_(param)


def adam_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int | Tensor,
    lr: float | Tensor,
    beta1: float = 0.9,
    beta2: float = 0.99,
    eps: float = 1e-15,
    weight_decay_l2: float = 0.0,
    skip_zero_grad: bool = False,
    param_fp16: Tensor | None = None,
    backend: str = "torch",
    skip: Tensor | None = None,
) -> None:
    """One in-place Adam step; see the module docstring for the exact semantics."""
    check_backend("adam_step", backend)
    if backend == "torch":
        adam_step_torch(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps,
                        weight_decay_l2, skip_zero_grad, param_fp16, skip)
    else:
        triton_module("adam", param, grad).fused_adam_step(
            param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay_l2,
            skip_zero_grad, param_fp16, skip)
