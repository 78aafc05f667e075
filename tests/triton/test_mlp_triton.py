"""Triton fused inference MLP vs the PyTorch reference nerfmine.ops.mlp (fp16 layers)."""

from __future__ import annotations

import pytest
import torch

from nerfmine.field import ModelConfig, NGPField
from nerfmine.ops.mlp import ngp_mlp_forward

pytestmark = pytest.mark.interpreter


def _inputs(n, device, seed):
    g = torch.Generator().manual_seed(seed)
    field = NGPField(ModelConfig(log2_table_size=10, max_resolution=64), seed=seed)
    # Encodings of a trained table are O(1e-1..1); the initial ones are ~1e-4.
    enc = (torch.randn(n, field.spec.output_dim, generator=g) * 0.5).to(device)
    d = torch.randn(n, 3, generator=g)
    sh = torch.nn.functional.normalize(d, dim=1)
    from nerfmine.ops.sh import sh_encode
    sh = sh_encode(sh, 4, backend="torch").to(device)
    with torch.no_grad():
        for w in field.mlp_parameters():
            w.mul_(3.0)  # larger than at init, so that every layer's ReLU cuts
    weights = [w.detach().to(device) for w in field.mlp_parameters()]
    return enc, sh, weights


@pytest.mark.parametrize("n", [1, 37, 130])
def test_fused_mlp_matches_reference(device, n):
    enc, sh, weights = _inputs(n, device, seed=n)
    out = ngp_mlp_forward(enc, sh, weights, backend="triton")
    ref = ngp_mlp_forward(enc.cpu(), sh.cpu(), [w.cpu() for w in weights], backend="torch")
    assert out.shape == (n, 4) and out.dtype == torch.float32
    assert ref.abs().max() > 0.1  # not a comparison of zeros
    # Same fp16 layers and fp32 sums; only the order of the sums differs.
    torch.testing.assert_close(out.cpu(), ref, atol=1e-2, rtol=1e-2)


def test_fused_mlp_empty(device):
    enc, sh, weights = _inputs(1, device, seed=0)
    out = ngp_mlp_forward(enc[:0], sh[:0], weights, backend="triton")
    assert out.shape == (0, 4)
