"""Triton SH (degree <= 4) vs the PyTorch reference nerfmine.ops.sh._sh_encode_torch."""

from __future__ import annotations

import pytest
import torch

from nerfmine.ops.sh import _sh_terms, sh_encode

pytestmark = pytest.mark.interpreter


def test_kernel_constants_are_the_reference_constants():
    from nerfmine.ops._triton.sh import SH_CONSTANTS

    ref = _sh_terms(4)
    assert len(SH_CONSTANTS) == len(ref)
    for (col, l, m, poly), (rl, rm, rpoly) in zip(SH_CONSTANTS, ref, strict=True):
        assert (l, m) == (rl, rm) and col == l * l + l + m
        assert poly == rpoly  # exact, to the last bit of the double


def _dirs(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    if n >= 6:  # the poles and the axes
        d[:6] = torch.tensor([[1.0, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1],
                              [0, 0, -1]])
    return d.to(device)


@pytest.mark.parametrize("n", [1, 7, 37, 300])
@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_matches_reference(device, n, degree):
    d = _dirs(n, device, seed=n)
    out = sh_encode(d, degree, backend="triton")
    ref = sh_encode(d, degree, backend="torch")
    assert out.shape == (n, degree * degree) and out.dtype == torch.float32
    # Same constants and evaluation order: equal up to fp32 rounding (an FMA on the GPU).
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def test_empty_and_float64(device):
    assert sh_encode(torch.zeros(0, 3, device=device), 4, backend="triton").shape == (0, 16)
    d = _dirs(9, device).double()
    out = sh_encode(d, 4, backend="triton")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, sh_encode(d, 4, backend="torch"), rtol=1e-6, atol=1e-6)


def test_degree_too_high_is_refused(device):
    from nerfmine.ops._triton.sh import sh_encode_triton

    with pytest.raises(ValueError, match="degree"):
        sh_encode_triton(_dirs(3, device), 5)
