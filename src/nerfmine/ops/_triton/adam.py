"""Fused Adam step in one Triton kernel (semantics: :mod:`nerfmine.ops.adam`).

One pass over a flat fp32 parameter: reads grad, param, exp_avg, exp_avg_sq (16 B/element),
writes them back (12 B) and optionally the fp16 copy (2 B), except where the gradient is exactly
0 under ``skip_zero_grad`` (nothing written there); a ``skip`` flag discards the whole step.
The step count may live on the device (0-dim tensor): the bias corrections are then computed in
the kernel, so no host synchronisation is needed.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

_BLOCK = 1024


@triton.jit
def _adam_kernel(
    p_ptr, g_ptr, m_ptr, v_ptr, h_ptr, step_ptr, lr_ptr, skip_ptr,
    n, step_f, lr_f, beta1, beta2, log2_beta1, log2_beta2, eps, wd,
    STEP_FROM_PTR: tl.constexpr, LR_FROM_PTR: tl.constexpr, SKIP_ZERO: tl.constexpr,
    WRITE_FP16: tl.constexpr, HAS_WD: tl.constexpr, HAS_SKIP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    if STEP_FROM_PTR:
        t = tl.load(step_ptr).to(tl.float32)
    else:
        t = step_f
    if LR_FROM_PTR:
        lr = tl.load(lr_ptr).to(tl.float32)
    else:
        lr = lr_f
    bc1 = 1.0 - tl.exp2(t * log2_beta1)
    bc2_sqrt = tl.sqrt(1.0 - tl.exp2(t * log2_beta2))
    # Every load is issued unconditionally: gating the param and moment loads on the gradient
    # (a sparse read) was slower even with 90 % of a table untouched (BENCHMARKS.md), since
    # hashed entries are touched at random and the loads then wait for the gradient's.
    graw = tl.load(g_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    p0 = tl.load(p_ptr + offs, mask=inb, other=0.0)
    m = tl.load(m_ptr + offs, mask=inb, other=0.0)
    v = tl.load(v_ptr + offs, mask=inb, other=0.0)
    upd = inb
    if HAS_SKIP:  # the whole step is discarded (fp16 overflow, or nothing mined)
        upd = upd & (tl.load(skip_ptr).to(tl.int32) == 0)
    if SKIP_ZERO:  # sparse Adam: untouched elements are not written
        upd = upd & (graw != 0.0)
    g = graw
    if HAS_WD:
        g = g + wd * p0
    m = m * beta1 + (1.0 - beta1) * g
    v = v * beta2 + (1.0 - beta2) * (g * g)
    denom = tl.sqrt(v) / bc2_sqrt + eps
    p = p0 - (lr / bc1) * m / denom
    tl.store(p_ptr + offs, p, mask=upd)
    tl.store(m_ptr + offs, m, mask=upd)
    tl.store(v_ptr + offs, v, mask=upd)
    if WRITE_FP16:
        # Only updated elements: a copy in sync before the step stays in sync.
        tl.store(h_ptr + offs, p.to(tl.float16), mask=upd)


def _check_flat(name: str, t: Tensor, ref: Tensor, dtype: torch.dtype | None = torch.float32):
    if t.numel() != ref.numel() or not t.is_contiguous() or t.device != ref.device:
        raise ValueError(f"fused_adam_step: {name} must be contiguous, with {ref.numel()} elements "
                         f"on {ref.device}; got shape {tuple(t.shape)} on {t.device}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"fused_adam_step: {name} must be {dtype}, got {t.dtype}")


def _scalar_arg(name: str, value: float | Tensor, param: Tensor):
    """(pointer, float, from_pointer) for a kernel argument given as a number or as a 0-dim
    device tensor (read in the kernel: no host synchronisation); an unused pointer is
    ``param``."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.device != param.device:
            raise ValueError(f"fused_adam_step: a {name} tensor must hold one value on the "
                             f"param's device ({param.device}); got {tuple(value.shape)} on "
                             f"{value.device}")
        return value, 0.0, True
    return param, float(value), False


def fused_adam_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step_tensor_or_int: int | Tensor,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay_l2: float,
    skip_zero_grad: bool,
    param_fp16: Tensor | None = None,
    skip: Tensor | None = None,
) -> None:
    """In-place fused Adam step over ``param`` (any shape, contiguous fp32)."""
    _check_flat("param", param, param)
    _check_flat("grad", grad, param, dtype=None)
    _check_flat("exp_avg", exp_avg, param)
    _check_flat("exp_avg_sq", exp_avg_sq, param)
    if param_fp16 is not None:
        _check_flat("param_fp16", param_fp16, param, dtype=torch.float16)
    n = param.numel()
    if n == 0:
        return
    step = step_tensor_or_int
    if not isinstance(step, Tensor) and int(step) < 1:
        raise ValueError(f"adam step must count this update (>= 1), got {step}")
    step_ptr, step_f, from_ptr = _scalar_arg("step", step, param)
    lr_ptr, lr_f, lr_from_ptr = _scalar_arg("lr", lr, param)
    if skip is not None and (skip.numel() != 1 or skip.device != param.device):
        raise ValueError(f"fused_adam_step: skip must be one bool on {param.device}, got "
                         f"{tuple(skip.shape)} on {skip.device}")
    grid = (triton.cdiv(n, _BLOCK),)
    _adam_kernel[grid](
        param, grad, exp_avg, exp_avg_sq,
        param_fp16 if param_fp16 is not None else param, step_ptr, lr_ptr,
        skip if skip is not None else param, n, step_f, lr_f, float(beta1), float(beta2),
        math.log2(beta1) if beta1 > 0 else -1e30, math.log2(beta2) if beta2 > 0 else -1e30,
        float(eps), float(weight_decay_l2),
        STEP_FROM_PTR=from_ptr, LR_FROM_PTR=lr_from_ptr, SKIP_ZERO=bool(skip_zero_grad),
        WRITE_FP16=param_fp16 is not None, HAS_WD=weight_decay_l2 != 0.0,
        HAS_SKIP=skip is not None, BLOCK=_BLOCK, num_warps=4,
    )
