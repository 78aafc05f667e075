"""Triton real spherical harmonics, degree <= 4 (semantics: :mod:`nerfmine.ops.sh`).

The constants are the reference's (``nerfmine.ops.sh._sh_terms(4)``: Legendre-derivative
polynomials in z with every factor folded in, printed at full double precision) and each column
is evaluated in the reference's order -- Horner in z, then times Re/Im (x + i y)^m -- so the two
backends agree to an fp32 rounding. ``tests/triton/test_sh_triton.py`` checks the literals
against ``_sh_terms``. No backward (directions get no gradient in nerfmine).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_BLOCK = 256
MAX_DEGREE = 4

# (column, l, m, Horner coefficients in ascending powers of z): documentation of the literals
# used in the kernel, checked against the reference by the tests.
SH_CONSTANTS = (
    (0, 0, 0, (0.28209479177387814,)),
    (1, 1, -1, (-0.48860251190292,)),
    (2, 1, 0, (0.0, 0.4886025119029199)),
    (3, 1, 1, (-0.48860251190292,)),
    (4, 2, -2, (0.5462742152960396,)),
    (5, 2, -1, (-0.0, -1.0925484305920792)),
    (6, 2, 0, (-0.31539156525252005, 0.0, 0.9461746957575601)),
    (7, 2, 1, (-0.0, -1.0925484305920792)),
    (8, 2, 2, (0.5462742152960396,)),
    (9, 3, -3, (-0.5900435899266435,)),
    (10, 3, -2, (0.0, 1.4453057213202773)),
    (11, 3, -1, (0.4570457994644658, -0.0, -2.285228997322329)),
    (12, 3, 0, (0.0, -1.1195289977703462, 0.0, 1.865881662950577)),
    (13, 3, 1, (0.4570457994644658, -0.0, -2.285228997322329)),
    (14, 3, 2, (0.0, 1.4453057213202773)),
    (15, 3, 3, (-0.5900435899266435,)),
)


@triton.jit
def _sh_kernel(d_ptr, out_ptr, N, DEGREE: tl.constexpr, BLOCK: tl.constexpr):
    OUT: tl.constexpr = DEGREE * DEGREE
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(d_ptr + offs * 3 + 0, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(d_ptr + offs * 3 + 1, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(d_ptr + offs * 3 + 2, mask=mask, other=0.0).to(tl.float32)
    o = out_ptr + offs * OUT
    tl.store(o + 0, tl.full((BLOCK,), 0.28209479177387814, tl.float32), mask=mask)
    if DEGREE > 1:
        # Re/Im of (x + i y)^m as in the reference's recurrence.
        re1 = x
        im1 = y
        tl.store(o + 1, -0.48860251190292 * im1, mask=mask)
        tl.store(o + 2, 0.4886025119029199 * z + 0.0, mask=mask)
        tl.store(o + 3, -0.48860251190292 * re1, mask=mask)
    if DEGREE > 2:
        re2 = re1 * x - im1 * y
        im2 = re1 * y + im1 * x
        tl.store(o + 4, 0.5462742152960396 * im2, mask=mask)
        tl.store(o + 5, (-1.0925484305920792 * z + -0.0) * im1, mask=mask)
        tl.store(o + 6, (0.9461746957575601 * z + 0.0) * z + -0.31539156525252005, mask=mask)
        tl.store(o + 7, (-1.0925484305920792 * z + -0.0) * re1, mask=mask)
        tl.store(o + 8, 0.5462742152960396 * re2, mask=mask)
    if DEGREE > 3:
        re3 = re2 * x - im2 * y
        im3 = re2 * y + im2 * x
        p31 = (-2.285228997322329 * z + -0.0) * z + 0.4570457994644658
        p32 = 1.4453057213202773 * z + 0.0
        tl.store(o + 9, -0.5900435899266435 * im3, mask=mask)
        tl.store(o + 10, p32 * im2, mask=mask)
        tl.store(o + 11, p31 * im1, mask=mask)
        tl.store(o + 12, ((1.865881662950577 * z + 0.0) * z + -1.1195289977703462) * z + 0.0,
                 mask=mask)
        tl.store(o + 13, p31 * re1, mask=mask)
        tl.store(o + 14, p32 * re2, mask=mask)
        tl.store(o + 15, -0.5900435899266435 * re3, mask=mask)


def sh_encode_triton(directions: Tensor, degree: int = 4) -> Tensor:
    """Real SH of unit directions [N, 3] -> [N, degree**2] float32 (degree 1..4).

    Computed in fp32 (a float64 input is evaluated in fp32 and returned as float64). Not
    differentiable: nerfmine passes no gradient to directions.
    """
    if not isinstance(degree, int) or not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"the Triton SH kernel supports degree 1..{MAX_DEGREE}, got {degree!r}; "
                         "use backend='torch' for higher degrees")
    if directions.dim() != 2 or directions.shape[1] != 3:
        raise ValueError(f"directions must have shape [N, 3], got {tuple(directions.shape)}")
    d = directions.detach().contiguous()
    if d.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        d = d.to(torch.float32)
    n = d.shape[0]
    out = torch.empty(n, degree * degree, dtype=torch.float32, device=d.device)
    if n:
        _sh_kernel[(triton.cdiv(n, _BLOCK),)](d, out, n, DEGREE=degree, BLOCK=_BLOCK,
                                              num_warps=4)
    return out.to(torch.float64) if directions.dtype == torch.float64 else out
