"""The fused inference MLP's reference (nerfmine.ops.mlp) and when the field uses it."""

from __future__ import annotations

import pytest
import torch

from nerfmine.field import ModelConfig, NGPField
from nerfmine.ops.mlp import _mlp_forward_torch, fused_shapes_ok, ngp_mlp_forward
from nerfmine.ops.sh import sh_encode


def test_reference_is_the_fields_mlps_in_fp16():
    g = torch.Generator().manual_seed(3)
    field = NGPField(ModelConfig(log2_table_size=10, max_resolution=64), seed=3)
    with torch.no_grad():
        for w in field.mlp_parameters():
            w.mul_(3.0)
    n = 53
    enc = torch.randn(n, field.spec.output_dim, generator=g) * 0.5
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
    sh = sh_encode(dirs, 4, backend="torch")
    out = ngp_mlp_forward(enc, sh, field.mlp_parameters(), backend="torch")
    # The same layers in float32: the field's own MLP code path on these encodings.
    w1, w2, c1, c2, c3 = field.mlp_parameters()
    with torch.no_grad():
        h = torch.relu(enc @ w1.T)
        geo = h @ w2.T
        h = torch.relu(torch.cat([geo, sh], -1) @ c1.T)
        h = torch.relu(h @ c2.T)
        want = torch.cat([geo[:, :1], h @ c3.T], -1)
    assert out.dtype == torch.float32 and want.abs().max() > 0.1
    torch.testing.assert_close(out, want, atol=2e-2, rtol=2e-2)  # fp16 rounding per layer
    assert not torch.equal(out, want)  # it does round to fp16
    assert torch.equal(out, _mlp_forward_torch(enc, sh, field.mlp_parameters()))


def test_shapes_the_kernel_takes():
    assert fused_shapes_ok(32, 64, 16, 16)
    assert not fused_shapes_ok(32, 64, 15, 16)
    assert not fused_shapes_ok(8, 64, 16, 16)  # below tl.dot's 16
    assert not fused_shapes_ok(32, 64, 16, 9)  # SH degree 3


def test_field_uses_the_fused_path_only_when_it_applies():
    field = NGPField(ModelConfig(log2_table_size=10, max_resolution=64), backend="triton")
    assert not field._use_fused_inference()  # not asked for
    field.fused_inference = True
    assert not field._use_fused_inference()  # a graph is being built
    with torch.no_grad():
        assert not field._use_fused_inference()  # no fp16 autocast (CPU)
    field.backend = "torch"
    with torch.no_grad():
        assert not field._use_fused_inference()


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        ngp_mlp_forward(torch.zeros(1, 32), torch.zeros(1, 16), [torch.zeros(1)] * 5, "cuda")


def test_fields_fused_branch_feeds_the_mlps_what_the_layered_path_does(monkeypatch):
    """The branch's wiring (encoding, SH, weight order), run with the reference MLPs."""
    field = NGPField(ModelConfig(log2_table_size=10, max_resolution=64), seed=5,
                     aabb_scale=2.0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        field.table.normal_(0.0, 0.3, generator=g)
        for w in field.mlp_parameters():
            w.mul_(3.0)
    pos = torch.rand(41, 3, generator=g) * 2.0 - 0.5  # inside the box 0.5 +- 1
    dirs = torch.nn.functional.normalize(torch.randn(41, 3, generator=g), dim=1)
    with torch.no_grad():
        want = field(pos, dirs)
        monkeypatch.setattr(field, "_use_fused_inference", lambda: True)
        got = field(pos, dirs)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
