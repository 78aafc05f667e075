"""The NGP field's two MLPs as one inference pass: encoding + SH -> raw outputs [s, c_r, c_g, c_b].

Semantics of the half-precision path of :class:`nerfmine.field.NGPField` (autocast fp16): every
layer multiplies fp16 inputs by fp16 weights with an fp32 sum, applies its ReLU, and rounds its
output to fp16; the raw outputs are returned as float32. No graph: this serves passes that need
no backward (mining's first pass, evaluation renders).

The reference runs the layers one by one with PyTorch; ``backend="triton"`` runs them all in one
kernel (:mod:`nerfmine.ops._triton.mlp`), keeping the hidden activations in registers.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from nerfmine.ops.backends import check_backend, triton_module


def fused_shapes_ok(enc_dim: int, hidden: int, geo: int, sh_dim: int) -> bool:
    """Whether the fused kernel takes these widths (powers of two, 16 or more: tl.dot's
    smallest tile)."""
    return all(d >= 16 and d & (d - 1) == 0 for d in (enc_dim, hidden, geo, sh_dim))


def density_layers(enc: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """The density MLP: encodings [N, E] -> geometry features [N, G] (column 0: raw s)."""
    return F.linear(torch.relu(F.linear(enc, w1)), w2)


def ngp_mlps(enc: Tensor, sh: Tensor, weights: list[Tensor]) -> Tensor:
    """Both MLPs layer by layer: raw outputs [N, 4] in the layers' dtype (fp16 under autocast;
    the field's path, and with fp16 arguments the fused kernel's reference)."""
    w1, w2, c1, c2, c3 = weights
    geo = density_layers(enc, w1, w2)  # [N, G]
    h = torch.relu(F.linear(torch.cat([geo, sh.to(geo.dtype)], dim=-1), c1))
    h = torch.relu(F.linear(h, c2))
    return torch.cat([geo[:, :1], F.linear(h, c3)], dim=-1)


def _mlp_forward_torch(enc: Tensor, sh: Tensor, weights: list[Tensor]) -> Tensor:
    return ngp_mlps(enc.half(), sh.half(), [w.detach().half() for w in weights]).float()


@torch.no_grad()
def ngp_mlp_forward(enc: Tensor, sh: Tensor, weights: list[Tensor],
                    backend: str = "torch") -> Tensor:
    """Raw outputs [N, 4] float32 from encodings [N, E] and SH [N, S].

    ``weights``: density_w1 [H, E], density_w2 [G, H], color_w1 [H, G + S], color_w2 [H, H],
    color_w3 [3, H] (:meth:`NGPField.mlp_parameters`)."""
    check_backend("ngp_mlp_forward", backend)
    if backend == "torch":
        return _mlp_forward_torch(enc, sh, weights)
    return triton_module("mlp", enc, sh, *weights).mlp_forward_triton(enc, sh, weights)
