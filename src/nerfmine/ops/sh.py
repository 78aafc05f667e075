"""Real spherical harmonics of view directions (the instant-ngp / tiny-cuda-nn basis).

Convention (the one of tcnn's "SphericalHarmonics" encoding and plenoxels): output column
``l*l + l + m`` holds Y_l^m for l = 0..degree-1, m = -l..l, with

    Y_l^0  = K_l^0 P_l^0(z)
    Y_l^m  = sqrt(2) K_l^m P_l^m(z) cos(m phi)      (m > 0)
    Y_l^-m = sqrt(2) K_l^m P_l^m(z) sin(m phi)      (m > 0)

where K_l^m = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!) and P_l^m carries the Condon-Shortley phase
(-1)^m (so Y_1^1 = -0.4886 x). For a unit vector, sin(theta)^m e^{i m phi} = (x + i y)^m, so
every function is a polynomial: Y_l^{+-m} = c (-1)^m (d^m P_l / dz^m)(z) * Re/Im (x + i y)^m.
The polynomial coefficients are derived below, exactly, from Rodrigues' formula.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import cache

import torch
from torch import Tensor

from nerfmine.ops.backends import check_backend, triton_module

MAX_DEGREE = 8  # tcnn's limit; instant-ngp's NeRF uses degree 4 (16 outputs)


def _legendre_derivative(l: int, m: int) -> list[Fraction]:
    """Coefficients (ascending powers of z) of d^m P_l / dz^m, exactly.

    Rodrigues: P_l(z) = 1 / (2^l l!) d^l/dz^l (z^2 - 1)^l.
    """
    # (z^2 - 1)^l = sum_k C(l, k) (-1)^(l-k) z^(2k)
    coeffs = [Fraction(0)] * (2 * l + 1)
    for k in range(l + 1):
        coeffs[2 * k] = Fraction(math.comb(l, k) * (-1) ** (l - k))
    for _ in range(l + m):
        coeffs = [coeffs[p] * p for p in range(1, len(coeffs))] or [Fraction(0)]
    scale = Fraction(1, 2**l * math.factorial(l))
    return [c * scale for c in coeffs]


@cache
def _sh_terms(degree: int) -> tuple[tuple[int, int, tuple[float, ...]], ...]:
    """For each output column: (l, m, z-polynomial coefficients with every constant folded in).

    Y_l^m = poly(z) * (1 if m == 0 else Re (x+iy)^m if m > 0 else Im (x+iy)^|m|).
    """
    terms = []
    for l in range(degree):
        for m in range(-l, l + 1):
            am = abs(m)
            norm2 = Fraction(2 * l + 1) * Fraction(math.factorial(l - am), math.factorial(l + am))
            k = math.sqrt(norm2 / (4 * math.pi))  # K_l^|m|
            if am:
                k *= math.sqrt(2.0) * (-1) ** am  # real-basis factor and Condon-Shortley phase
            poly = tuple(float(c) * k for c in _legendre_derivative(l, am))
            terms.append((l, m, poly))
    return tuple(terms)


def _sh_encode_torch(directions: Tensor, degree: int) -> Tensor:
    """Pure-PyTorch real SH: [N, 3] unit vectors -> [N, degree**2]. Differentiable."""
    dtype = torch.promote_types(directions.dtype, torch.float32)
    d = directions.to(dtype)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]  # [N] each
    # Re / Im of (x + i y)^m, m = 0..degree-1.
    re, im = [torch.ones_like(x)], [torch.zeros_like(x)]  # [N] each
    for _ in range(1, degree):
        re_prev, im_prev = re[-1], im[-1]
        re.append(re_prev * x - im_prev * y)
        im.append(re_prev * y + im_prev * x)
    columns = []
    for _l, m, poly in _sh_terms(degree):
        value = torch.full_like(z, poly[-1])  # Horner in z, [N]
        for c in reversed(poly[:-1]):
            value = value * z + c
        if m > 0:
            value = value * re[m]
        elif m < 0:
            value = value * im[-m]
        columns.append(value)
    return torch.stack(columns, dim=1)  # [N, degree**2]


def sh_encode(directions: Tensor, degree: int = 4, backend: str = "torch") -> Tensor:
    """Real spherical harmonics of unit directions: [N, 3] -> [N, degree**2].

    Column ``l*l + l + m`` is Y_l^m (see the module docstring for the basis). Directions must be
    unit vectors (they are not normalised here). Output dtype: float32 (float64 for float64
    input). nerfmine passes no gradient to directions, but the torch backend is differentiable.
    ``backend``: "torch" or "triton" (CUDA, or TRITON_INTERPRET=1).
    """
    if not isinstance(degree, int) or not 1 <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be an int in [1, {MAX_DEGREE}], got {degree!r}")
    if directions.dim() != 2 or directions.shape[1] != 3:
        raise ValueError(f"directions must have shape [N, 3], got {tuple(directions.shape)}")
    check_backend("sh_encode", backend)
    if backend == "torch":
        return _sh_encode_torch(directions, degree)
    return triton_module("sh", directions).sh_encode_triton(directions, degree)
