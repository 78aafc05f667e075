"""Triton per-ray parameters of the exponential-stepping lattice (semantics and reference:
:func:`nerfmine.ops.cone_lattice.lattice_params`).

One lane per ray, the reference's arithmetic expression by expression: fp32 products and sums
compiled without contracted multiply-adds, the one division rounded to nearest, and ``r^j`` by
binary powering with the fp32 squares of ``r``, lowest bit first. The reference makes some 250
small tensor operators of it (four powerings of 11 bits); on the GPU those cost more than the
march itself for a real capture's few thousand rays, so the Triton march calls this instead.

The estimate of the regime-B count is computed in fp32 here and in fp64 in the reference; it
only chooses the window {estimate - 1, estimate, estimate + 1} in which the exact count (the
smallest ``j`` with ``tB r^j >= b / c``, by the lattice's own products) is searched, and both
estimates lie within one of the exact count (the products' relative rounding error, below
1e-6, moves it by less than 1e-3), so the parameters are bit-identical.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from nerfmine.ops.cone_lattice import Lattice, power_bits, ratio_squares

_BLOCK = 256


@triton.jit
def _power(j, ratio, POWER_BITS: tl.constexpr):
    """r^j by binary powering with the fp32 squares of r, lowest bit first (``power``)."""
    out = j.to(tl.float32) * 0.0 + 1.0
    square = ratio
    for bit in tl.static_range(POWER_BITS):
        out = out * tl.where(((j >> bit) & 1) == 1, square, 1.0)
        square = square * square
    return out


@triton.jit
def _lattice_params_kernel(t_near_ptr, jitter_ptr, t0_ptr, k_a_ptr, t_b_ptr, k_b_ptr, t_c_ptr,
                           N, a, c, b, thr_a, thr_c, ratio, inv_log_r,
                           POWER_BITS: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < N
    t_near = tl.load(t_near_ptr + i, mask=mask, other=0.0)
    jitter = tl.load(jitter_ptr + i, mask=mask, other=0.0)
    t0 = t_near + jitter * tl.minimum(tl.maximum(t_near * c, a), b)
    k_a = tl.maximum(tl.math.ceil(tl.div_rn(thr_a - t0, t_near * 0.0 + a)), 0.0).to(tl.int64)
    t_b = t0 + k_a.to(tl.float32) * a
    ratio_c = tl.maximum(thr_c / tl.maximum(t_b, 1e-30), 1.0)
    guess = tl.maximum(tl.math.ceil(tl.log(ratio_c) * inv_log_r).to(tl.int64), 1)
    n_b = guess + 1
    for s in tl.static_range(3):  # shifts 1, 0, -1: the smallest j that reaches b / c wins
        j = tl.maximum(guess + (1 - s), 0)
        n_b = tl.where(t_b * _power(j, ratio, POWER_BITS) >= thr_c, j, n_b)
    n_b = tl.where(t_b >= thr_c, 0, n_b)
    tl.store(t0_ptr + i, t0, mask=mask)
    tl.store(k_a_ptr + i, k_a, mask=mask)
    tl.store(t_b_ptr + i, t_b, mask=mask)
    tl.store(k_b_ptr + i, k_a + n_b, mask=mask)
    tl.store(t_c_ptr + i, t_b * _power(n_b, ratio, POWER_BITS), mask=mask)


def lattice_params_triton(t_near: Tensor, jitter: Tensor, a: float, c: float,
                          b: float) -> Lattice:
    """:func:`nerfmine.ops.cone_lattice.lattice_params` for fp32 arguments ``a``, ``c``, ``b``
    (values a float32 holds exactly) in one launch."""
    t_near = t_near.float().contiguous()
    jitter = jitter.float().contiguous()
    n = t_near.shape[0]
    thr_a = float(torch.tensor(a, dtype=torch.float32) / torch.tensor(c, dtype=torch.float32))
    thr_c = float(torch.tensor(b, dtype=torch.float32) / torch.tensor(c, dtype=torch.float32))
    bits = power_bits(a, c, b)
    ratio = ratio_squares(c, 1)[0]
    t0, t_b, t_c = (torch.empty_like(t_near) for _ in range(3))
    k_a, k_b = (torch.empty(n, dtype=torch.int64, device=t_near.device) for _ in range(2))
    if n > 0:
        _lattice_params_kernel[(triton.cdiv(n, _BLOCK),)](
            t_near, jitter, t0, k_a, t_b, k_b, t_c, n, a, c, b, thr_a, thr_c, ratio,
            1.0 / math.log(ratio), POWER_BITS=bits, BLOCK=_BLOCK, enable_fp_fusion=False)
    return Lattice(t0=t0, k_a=k_a, t_b=t_b, k_b=k_b, t_c=t_c)
