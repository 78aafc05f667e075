"""Triton: the NGP field's MLPs for inference in one kernel (semantics: :mod:`nerfmine.ops.mlp`).

One program takes BLOCK_M samples through density layer 1 (ReLU), density layer 2, colour
layers 1 and 2 (ReLU) and colour layer 3 with ``tl.dot`` (fp16 operands, fp32 sums), rounding
each layer's output to fp16 as the layer-by-layer path does. The colour MLP's first layer is
split into its geometry and SH columns (two dots summed in fp32: the concatenation is never
built); its 3 outputs are computed in a 16-wide tile whose padding columns have zero weights.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

_BLOCK_M = 64


@triton.jit
def _mlp_fwd_kernel(enc_ptr, sh_ptr, w1_ptr, w2_ptr, c1_ptr, c2_ptr, c3_ptr, out_ptr, N,
                    ENC: tl.constexpr, HID: tl.constexpr, GEO: tl.constexpr, SH: tl.constexpr,
                    BLOCK_M: tl.constexpr):
    OUTP: tl.constexpr = 16
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    ke = tl.arange(0, ENC)
    kh = tl.arange(0, HID)
    kg = tl.arange(0, GEO)
    ks = tl.arange(0, SH)
    ko = tl.arange(0, OUTP)
    enc = tl.load(enc_ptr + rows[:, None] * ENC + ke[None, :], mask=rmask[:, None],
                  other=0.0).to(tl.float16)
    # Weights are [out, in] row-major; each dot takes the transpose [in, out].
    w1t = tl.load(w1_ptr + kh[None, :] * ENC + ke[:, None]).to(tl.float16)  # [ENC, HID]
    h = tl.maximum(tl.dot(enc, w1t), 0.0).to(tl.float16)  # [M, HID]
    w2t = tl.load(w2_ptr + kg[None, :] * HID + kh[:, None]).to(tl.float16)  # [HID, GEO]
    geo = tl.dot(h, w2t).to(tl.float16)  # [M, GEO]
    c1g = tl.load(c1_ptr + kh[None, :] * (GEO + SH) + kg[:, None]).to(tl.float16)  # [GEO, HID]
    c1s = tl.load(c1_ptr + kh[None, :] * (GEO + SH) + GEO + ks[:, None]).to(tl.float16)
    sh = tl.load(sh_ptr + rows[:, None] * SH + ks[None, :], mask=rmask[:, None],
                 other=0.0).to(tl.float16)
    h = tl.maximum(tl.dot(geo, c1g) + tl.dot(sh, c1s), 0.0).to(tl.float16)
    c2t = tl.load(c2_ptr + kh[None, :] * HID + kh[:, None]).to(tl.float16)  # [HID, HID]
    h = tl.maximum(tl.dot(h, c2t), 0.0).to(tl.float16)
    c3t = tl.load(c3_ptr + ko[None, :] * HID + kh[:, None], mask=ko[None, :] < 3,
                  other=0.0).to(tl.float16)  # [HID, 16], columns 3.. zero
    color = tl.dot(h, c3t).to(tl.float16).to(tl.float32)  # [M, 16]
    s = tl.sum(tl.where(kg[None, :] == 0, geo.to(tl.float32), 0.0), axis=1)  # [M]
    tl.store(out_ptr + rows * 4, s, mask=rmask)
    tl.store(out_ptr + rows[:, None] * 4 + 1 + ko[None, :], color,
             mask=rmask[:, None] & (ko[None, :] < 3))


def mlp_forward_triton(enc: Tensor, sh: Tensor, weights: list[Tensor]) -> Tensor:
    w1, w2, c1, c2, c3 = (w.detach().contiguous() for w in weights)
    n, enc_dim = enc.shape
    hid, geo, sh_dim = w1.shape[0], w2.shape[0], sh.shape[1]
    if (w1.shape[1] != enc_dim or w2.shape[1] != hid or tuple(c1.shape) != (hid, geo + sh_dim)
            or tuple(c2.shape) != (hid, hid) or tuple(c3.shape) != (3, hid)):
        raise ValueError("mlp_forward_triton: weight shapes do not fit the encoding and SH "
                         f"widths ({enc_dim}, {sh_dim})")
    out = torch.empty(n, 4, device=enc.device, dtype=torch.float32)
    if n == 0:
        return out
    grid = (triton.cdiv(n, _BLOCK_M),)
    _mlp_fwd_kernel[grid](enc.contiguous(), sh.contiguous(), w1, w2, c1, c2, c3, out, n,
                          ENC=enc_dim, HID=hid, GEO=geo, SH=sh_dim, BLOCK_M=_BLOCK_M)
    return out
