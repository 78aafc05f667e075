"""Real spherical harmonics: closed form against independent float64 evaluations, orthonormality."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from nerfmine.errors import NerfmineError
from nerfmine.ops.sh import sh_encode


def _unit_directions(n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=dtype), dim=1)


def _assoc_legendre(l: int, m: int, z: np.ndarray) -> np.ndarray:
    """P_l^m(z), m >= 0, with the Condon-Shortley phase, by the standard three-term recurrence."""
    p_mm = (-1) ** m * math.prod(range(1, 2 * m, 2)) * (1 - z * z) ** (m / 2)  # (2m-1)!!
    if l == m:
        return p_mm
    p_prev, p = p_mm, z * (2 * m + 1) * p_mm
    for ll in range(m + 2, l + 1):
        p_prev, p = p, ((2 * ll - 1) * z * p - (ll + m - 1) * p_prev) / (ll - m)
    return p


def _real_sh_reference(d: np.ndarray, degree: int) -> np.ndarray:
    """Real SH from spherical angles in float64 (no polynomial form shared with the library)."""
    theta = np.arccos(np.clip(d[:, 2], -1, 1))
    phi = np.arctan2(d[:, 1], d[:, 0])
    cols = []
    for l in range(degree):
        for m in range(-l, l + 1):
            am = abs(m)
            ratio = math.factorial(l - am) / math.factorial(l + am)
            k = math.sqrt((2 * l + 1) / (4 * math.pi) * ratio)
            p = _assoc_legendre(l, am, np.cos(theta))
            if m == 0:
                cols.append(k * p)
            elif m > 0:
                cols.append(math.sqrt(2) * k * p * np.cos(am * phi))
            else:
                cols.append(math.sqrt(2) * k * p * np.sin(am * phi))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("degree", [1, 2, 3, 4, 8])
def test_matches_legendre_recurrence(degree):
    d = _unit_directions(257)
    out = sh_encode(d, degree=degree)
    np.testing.assert_allclose(out.numpy(), _real_sh_reference(d.numpy(), degree), atol=1e-12)


def test_matches_scipy_complex_harmonics():
    special = pytest.importorskip("scipy.special")
    if not hasattr(special, "sph_harm_y"):
        pytest.skip("scipy too old for sph_harm_y")
    d = _unit_directions(300, seed=1).numpy()
    theta = np.arccos(d[:, 2])  # polar
    phi = np.arctan2(d[:, 1], d[:, 0])  # azimuth
    expected = []
    for l in range(4):
        for m in range(-l, l + 1):
            y = special.sph_harm_y(l, abs(m), theta, phi)  # complex, Condon-Shortley phase
            if m == 0:
                expected.append(y.real)
            elif m > 0:
                expected.append(math.sqrt(2) * y.real)
            else:
                expected.append(math.sqrt(2) * y.imag)
    out = sh_encode(torch.from_numpy(d), degree=4).numpy()
    np.testing.assert_allclose(out, np.stack(expected, axis=1), atol=1e-12)


def test_known_low_order_constants():
    d = _unit_directions(50, seed=2)
    x, y, z = d.unbind(1)
    out = sh_encode(d, degree=4)
    c0, c1 = 0.28209479177387814, 0.48860251190291987
    expected = torch.stack([torch.full_like(x, c0), -c1 * y, c1 * z, -c1 * x], dim=1)
    torch.testing.assert_close(out[:, :4], expected, rtol=0, atol=1e-15)


def test_orthonormal_exact_quadrature():
    # Gauss-Legendre in z times uniform phi integrates these polynomials exactly.
    nodes, wz = np.polynomial.legendre.leggauss(12)
    n_phi = 24
    phi = (np.arange(n_phi) + 0.5) * 2 * np.pi / n_phi
    z, ph = np.meshgrid(nodes, phi, indexing="ij")
    r = np.sqrt(1 - z**2)
    d = np.stack([r * np.cos(ph), r * np.sin(ph), z], axis=-1).reshape(-1, 3)
    w = (wz[:, None] * np.full(n_phi, 2 * np.pi / n_phi)[None, :]).reshape(-1)
    y = sh_encode(torch.from_numpy(d), degree=4).numpy()  # [M, 16]
    gram = (y * w[:, None]).T @ y
    np.testing.assert_allclose(gram, np.eye(16), atol=1e-12)


def test_orthonormal_latlong_grid():
    # Midpoint lat-long grid with sin(theta) weights, float32 evaluation.
    n_theta, n_phi = 200, 400
    theta = (np.arange(n_theta) + 0.5) * np.pi / n_theta
    phi = (np.arange(n_phi) + 0.5) * 2 * np.pi / n_phi
    t, p = np.meshgrid(theta, phi, indexing="ij")
    d = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    w = (np.sin(t) * (np.pi / n_theta) * (2 * np.pi / n_phi)).reshape(-1)
    y = sh_encode(torch.from_numpy(d).float(), degree=4).double().numpy()
    gram = (y * w[:, None]).T @ y
    np.testing.assert_allclose(gram, np.eye(16), atol=1e-3)


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_output_sizes_and_dtype(degree):
    out = sh_encode(_unit_directions(5, dtype=torch.float32), degree=degree)
    assert out.shape == (5, degree**2) and out.dtype == torch.float32
    assert sh_encode(_unit_directions(5), degree=degree).dtype == torch.float64
    assert sh_encode(_unit_directions(5).half(), degree=degree).dtype == torch.float32


def test_lower_degree_is_a_prefix():
    d = _unit_directions(20, dtype=torch.float32)
    torch.testing.assert_close(sh_encode(d, 2), sh_encode(d, 4)[:, :4], rtol=0, atol=0)


def test_torch_backend_is_differentiable():
    d = _unit_directions(4, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: sh_encode(v, degree=4), (d,))


@pytest.mark.parametrize("degree", [0, 9, 2.0])
def test_bad_degree(degree):
    with pytest.raises(ValueError, match="degree"):
        sh_encode(_unit_directions(3), degree=degree)


def test_backends(monkeypatch):
    d = _unit_directions(3, dtype=torch.float32)
    with pytest.raises(ValueError, match="torch.*triton"):
        sh_encode(d, backend="numpy")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(NerfmineError, match="CUDA"):
        sh_encode(d, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(sys.modules, "nerfmine.ops._triton.sh", None)
    with pytest.raises(NerfmineError, match="backend='torch'"):
        sh_encode(d, backend="triton")
