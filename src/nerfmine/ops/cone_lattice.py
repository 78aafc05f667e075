"""The candidates of exponential stepping in closed form, so that a ray's candidates can be
tested in parallel instead of one cone step at a time.

instant-ngp's large-scene marcher walks ``t_{k+1} = t_k + dt(t_k)`` with
``dt(t) = clamp(c t, a, b)`` (``a`` the smallest step, ``b`` the largest, ``c`` the cone angle).
That recurrence has three regimes, and each has a closed form:

- A, ``c t < a``: constant steps, ``t_k = t0 + k a``;
- B, ``a <= c t < b``: ``t_{k+1} = t_k (1 + c)``, a geometric sequence, ``t_k = tB r^(k - kA)``
  with ``r = 1 + c``;
- C, ``c t >= b``: constant steps again, ``t_k = tC + (k - kB) b``.

:func:`lattice_params` computes, per ray, the start ``t0`` (instant-ngp's jittered
``t_near + u dt(t_near)``), the index ``kA`` of the first candidate of regime B, its ``tB``, the
index ``kB`` of the first candidate of regime C and its ``tC``; :func:`lattice_t` gives
candidate ``k``. Every operation is an fp32 addition, multiplication or comparison (``r^j`` by
binary powering with the squares ``r^(2^i)`` in a fixed order), each rounded as IEEE requires,
so the Triton kernels reproduce the torch reference bit for bit (they are compiled without
contracted multiply-adds). In exact arithmetic the lattice is the recurrence's sequence; in
fp32 the two differ by rounding only (tests/test_cascades.py bounds the difference).

The parameters are computed here, by torch, for both backends (as the walk's start was).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from nerfmine.ops.scene_box import cone_step, fp32


def power_bits(step_size: float, cone_angle: float, max_step: float) -> int:
    """Bits of the largest geometric exponent ``j = k - kA`` regime B can reach: it spans at
    most ``log(b / a) / log(1 + c)`` candidates (1778 for instant-ngp's a = sqrt(3)/1024,
    b = sqrt(3), c = 1/256: 11 bits), plus a margin for rounding. Higher squares of r are never
    needed, and are not formed (they would overflow fp32)."""
    a, c, b = fp32(step_size), fp32(cone_angle), fp32(max_step)
    span = math.log(max(b / a, 1.0)) / math.log1p(c) + 4.0
    return max(1, int(math.ceil(span)).bit_length())


@dataclass
class Lattice:
    """Per-ray parameters of the candidate lattice (all [R], on the rays' device)."""

    t0: Tensor  # float32, candidate 0
    k_a: Tensor  # int64, first candidate of regime B (0: none in A)
    t_b: Tensor  # float32, candidate k_a
    k_b: Tensor  # int64, first candidate of regime C
    t_c: Tensor  # float32, candidate k_b


def ratio_squares(cone_angle: float, bits: int) -> list[float]:
    """r, r^2, r^4, ... (``bits`` of them) with ``r = fp32(1 + c)``, each the fp32 square of the
    one before (the order the kernels multiply them in), as Python floats (exact fp32 values:
    scalars reach the device without a copy, which a captured CUDA graph could not hold)."""
    square = torch.tensor(1.0 + fp32(cone_angle), dtype=torch.float32)
    squares = []
    for _ in range(bits):
        squares.append(float(square))
        square = square * square
    return squares


def power(j: Tensor, squares: list[float]) -> Tensor:
    """``r^j`` for integer exponents ``0 <= j < 2^len(squares)`` (any shape): the product of the
    squares of ``j``'s set bits, lowest bit first, in fp32. # like j, float32"""
    out = torch.ones(j.shape, dtype=torch.float32, device=j.device)
    for bit, square in enumerate(squares):
        out = out * torch.where(((j >> bit) & 1) == 1, square, 1.0).float()
    return out


def lattice_params(t_near: Tensor, jitter: Tensor, step_size: float, cone_angle: float,
                   max_step: float) -> Lattice:
    """The lattice of each ray (see the module docstring). ``t_near`` [R] float32 is where the
    ray enters the box, ``jitter`` [R] in [0, 1) where its first candidate sits within the
    first step (0.5 for renders). Reads nothing on the host."""
    a, c, b = fp32(step_size), fp32(cone_angle), fp32(max_step)
    t0 = t_near + jitter * cone_step(t_near, c, a, b)  # [R]
    thr_a = torch.tensor(a, dtype=torch.float32) / torch.tensor(c, dtype=torch.float32)
    thr_c = torch.tensor(b, dtype=torch.float32) / torch.tensor(c, dtype=torch.float32)
    thr_a, thr_c = float(thr_a), float(thr_c)
    # Regime A: candidates t0 + k a while t < a / c.
    k_a = torch.ceil((thr_a - t0) / a).clamp(min=0).to(torch.int64)  # [R]
    t_b = t0 + k_a.float() * a  # [R]
    # Regime B: tB r^j while below b / c. An estimate of the count, then the exact smallest j
    # with tB r^j >= b / c among estimate - 1 .. estimate + 1 (the lattice's own products).
    squares = ratio_squares(c, power_bits(a, c, b))
    r = squares[0]
    ratio = (thr_c / t_b.double().clamp(min=1e-30)).clamp(min=1.0)
    guess = torch.ceil(torch.log(ratio) / math.log(r)).to(torch.int64).clamp(min=1)  # [R]
    n_b = guess + 1
    for shift in (1, 0, -1):  # the smallest candidate j that reaches b / c wins
        j = (guess + shift).clamp(min=0)
        n_b = torch.where(t_b * power(j, squares) >= thr_c, j, n_b)
    n_b = torch.where(t_b >= thr_c, torch.zeros_like(n_b), n_b)
    k_b = k_a + n_b  # [R]
    t_c = t_b * power(n_b, squares)  # [R]
    return Lattice(t0=t0, k_a=k_a, t_b=t_b, k_b=k_b, t_c=t_c)


def lattice_t(k: Tensor, lattice: Lattice, step_size: float, cone_angle: float,
              max_step: float, squares: list[float] | None = None) -> Tensor:
    """Candidate ``k`` of each ray: ``k`` [R, K] int64, rows are rays. # [R, K] float32"""
    a, b = fp32(step_size), fp32(max_step)
    if squares is None:
        squares = ratio_squares(cone_angle, power_bits(step_size, cone_angle, max_step))
    t0, k_a, t_b, k_b, t_c = (x[:, None] for x in (lattice.t0, lattice.k_a, lattice.t_b,
                                                   lattice.k_b, lattice.t_c))
    in_a = t0 + k.float() * a
    in_b = t_b * power((k - k_a).clamp(min=0), squares)
    in_c = t_c + (k - k_b).float() * b
    return torch.where(k < k_a, in_a, torch.where(k < k_b, in_b, in_c))


def candidates_before(t_far: Tensor, lattice: Lattice, step_size: float, cone_angle: float,
                      max_step: float) -> Tensor:
    """An upper bound on the candidates with ``t < t_far`` (+2 for rounding). # [R] int64"""
    a, b, c = fp32(step_size), fp32(max_step), fp32(cone_angle)
    t_far = t_far.double()
    n_a = torch.ceil((t_far - lattice.t0.double()) / a).clamp(min=0)
    n_b = lattice.k_a.double() + torch.ceil(
        torch.log((t_far / lattice.t_b.double().clamp(min=1e-30)).clamp(min=1.0))
        / math.log1p(c)).clamp(min=0)
    n_c = lattice.k_b.double() + torch.ceil((t_far - lattice.t_c.double()) / b).clamp(min=0)
    n = torch.where(t_far <= lattice.t_b.double(), n_a,
                    torch.where(t_far <= lattice.t_c.double(), n_b, n_c))
    return n.to(torch.int64) + 2
