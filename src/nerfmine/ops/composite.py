"""Volume rendering of packed samples, and the closed-form output gradients used by mining.

Conventions (``docs/design.md``, "Compositing"): for the samples i = 1..n of one ray,
alpha_i = 1 - exp(-sigma_i dt_i), T_i = prod_{j<i} (1 - alpha_j), w_i = T_i alpha_i. A sample is
composited only while T_i >= ``min_transmittance`` (early termination); later samples get weight
exactly 0 and gradient exactly 0. C_hat = sum_i w_i colour_i + (1 - sum_i w_i) bg.

The torch backend is the reference: activations are evaluated in float32 (float64 when ``raw``
is float64, so that the reference can be gradchecked), everything after them in float64; the
per-ray (segmented) cumulative sums are differences of one global cumulative sum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nerfmine.ops.backends import check_backend, triton_module
from nerfmine.ops.packed import PackedSamples

# Optical depth sigma*dt of one sample is capped here. exp(-64) < 2e-28: the sample's alpha is
# 1.0 in float64 either way and every later sample of its ray is terminated, so the cap changes
# no output; it keeps a huge (or infinite) density from ruining the global cumulative sum,
# whose differences give the transmittance of every later ray.
_MAX_OPTICAL_DEPTH = 64.0
# trunc_exp's derivative clamps its argument to [-15, 15] (instant-ngp.md, NeRF model).
_TRUNC_EXP_CLAMP = 15.0


def _activation_dtype(raw: Tensor) -> torch.dtype:
    """float32 for network outputs (fp16, bf16, fp32); float64 stays float64."""
    return torch.float64 if raw.dtype == torch.float64 else torch.float32


class _TruncExp(torch.autograd.Function):
    """exp(s) forward; grad * exp(clamp(s, -15, 15)) backward."""

    @staticmethod
    def forward(ctx, s: Tensor) -> Tensor:
        s = s.to(_activation_dtype(s))
        ctx.save_for_backward(s)
        return torch.exp(s)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (s,) = ctx.saved_tensors
        return grad * torch.exp(s.clamp(-_TRUNC_EXP_CLAMP, _TRUNC_EXP_CLAMP))


def trunc_exp(s: Tensor) -> Tensor:
    """Density activation: exp(s) in float32 (float64 input: float64), derivative
    exp(clamp(s, -15, 15))."""
    return _TruncExp.apply(s)


def _ray_index(per_ray: Tensor, samples: PackedSamples, dummy: int) -> Tensor:
    """Per-sample lookup of a per-ray int64 value; padding (ray n_rays) gets ``dummy``. # [C]"""
    pad = torch.full((1,), dummy, dtype=per_ray.dtype, device=per_ray.device)
    return torch.cat([per_ray, pad])[samples.ray_ids]  # [C]


def _segmented_exclusive_cumsum(values: Tensor, start_index: Tensor) -> Tensor:
    """Sum of ``values`` over the earlier samples of the same ray. # [C]

    ``start_index`` [C] is the index of the first sample of each sample's ray (<= C).
    """
    zero = values.new_zeros(1)
    prefix = torch.cat([zero, values.cumsum(0)])  # [C+1], prefix[i] = sum_{j<i} values_j
    return prefix[:-1] - prefix[start_index]  # [C]


def _segmented_exclusive_suffix_sum(values: Tensor, end_index: Tensor) -> Tensor:
    """Sum of ``values`` [C, k] over the later samples of the same ray. # [C, k]

    ``end_index`` [C] is one past the last sample of each sample's ray (<= C). Computed as a
    reverse cumulative sum, never as the ray total minus a prefix.
    """
    # Scanned along the last, contiguous dimension: CUDA's scan over dim 0 of a [C, k] tensor
    # parallelises over the k columns only and is 20x slower.
    rows = values.flip(0).t().contiguous()  # [k, C], reversed samples
    reverse = rows.cumsum(dim=1).t().flip(0)  # [C, k], sum_{j>=i}
    suffix = torch.cat([reverse, values.new_zeros((1,) + values.shape[1:])])  # [C+1, k]
    return suffix[1:] - suffix[end_index]  # [C, k]


def _weights(
    sigma: Tensor, samples: PackedSamples, min_transmittance: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Float64 compositing terms of every sample.

    Returns (tau [C] optical depth, 0 where not composited; T [C] transmittance before the
    sample; w [C] weight; active [C] bool, composited; capped [C] bool, optical depth hit the
    cap). Differentiable with respect to ``sigma`` through tau, T and w.
    """
    capacity = samples.capacity
    dt = samples.dt.double()  # [C]
    live = dt > 0  # [C], padding has dt = 0
    raw_tau = torch.where(live, sigma.double() * dt, 0.0)  # [C]; avoids inf * 0 on padding
    capped = raw_tau >= _MAX_OPTICAL_DEPTH  # [C]
    tau = raw_tau.clamp(max=_MAX_OPTICAL_DEPTH)  # [C]
    start_index = _ray_index(samples.ray_starts, samples, capacity)  # [C]
    with torch.no_grad():
        # Termination is decided on the detached values: it has no gradient.
        before = _segmented_exclusive_cumsum(tau.detach(), start_index)  # [C]
        active = live & (torch.exp(-before) >= min_transmittance)  # [C]
    # Terminated samples are a suffix of their ray, so zeroing them leaves every active
    # sample's transmittance unchanged and makes their gradient exactly 0.
    tau = torch.where(active, tau, 0.0)  # [C]
    transmittance = torch.exp(-_segmented_exclusive_cumsum(tau, start_index))  # [C]
    alpha = -torch.expm1(-tau)  # [C], exactly 0 where not composited
    weights = transmittance * alpha  # [C]
    return tau, transmittance, weights, active, capped


def composite(
    raw: Tensor,
    samples: PackedSamples,
    background: Tensor,
    backend: str = "torch",
    min_transmittance: float = 1e-4,
) -> tuple[Tensor, Tensor, Tensor]:
    """Composite pre-activation outputs along each ray, differentiable with respect to ``raw``.

    Args:
        raw: [C, 4] network outputs: raw density s (sigma = trunc_exp(s)), raw colour (sigmoid).
        samples: the packed samples ``raw`` was evaluated at.
        background: [R, 3] background colour of every ray.
        backend: "torch" (reference) or "triton".
        min_transmittance: early termination threshold on the transmittance before a sample.

    Returns:
        rgb [R, 3], opacity [R] (sum of weights), depth [R] (sum of w t), float32 (float64 for
        float64 ``raw``). Invalid rays
        have no samples: they get the background, opacity 0 and depth 0.
    """
    check_backend("composite", backend)
    if backend == "triton":
        return triton_module("composite", raw).composite_triton(
            raw, samples, background, min_transmittance=min_transmittance)

    n_rays = samples.n_rays
    dtype = _activation_dtype(raw)
    raw = raw.to(dtype)
    sigma = trunc_exp(raw[:, 0])  # [C]
    colour = torch.sigmoid(raw[:, 1:4]).double()  # [C, 3]
    _, _, weights, _, _ = _weights(sigma, samples, min_transmittance)  # [C]

    per_sample = torch.cat(
        [weights[:, None] * colour, weights[:, None], (weights * samples.t.double())[:, None]],
        dim=1,
    )  # [C, 5]: w c, w, w t
    sums = per_sample.new_zeros((n_rays + 1, 5)).index_add(0, samples.ray_ids, per_sample)
    sums = sums[:n_rays]  # [R, 5]; row n_rays collected the padding
    opacity = sums[:, 3]  # [R]
    rgb = sums[:, :3] + (1.0 - opacity)[:, None] * background.double()  # [R, 3]
    return rgb.to(dtype), opacity.to(dtype), sums[:, 4].to(dtype)


def composite_output_grads(
    raw: Tensor,
    samples: PackedSamples,
    background: Tensor,
    target: Tensor,
    backend: str = "torch",
    min_transmittance: float = 1e-4,
) -> tuple[Tensor, Tensor]:
    """Per-ray loss and its gradient with respect to ``raw``, in closed form (no autograd graph).

    l_r = mean over RGB of (C_hat_r - target_r)^2 for valid rays, 0 for invalid ones;
    grad_raw = d(sum_r l_r)/d raw, following hard-sample-mining.md ("Closed form of step 4").
    Padding slots and terminated samples get exactly 0.

    Returns:
        loss_per_ray [R], grad_raw [C, 4]: float32 (float64 for float64 ``raw``).
    """
    check_backend("composite_output_grads", backend)
    if backend == "triton":
        return triton_module("composite", raw).composite_output_grads_triton(
            raw, samples, background, target, min_transmittance=min_transmittance)

    with torch.no_grad():
        n_rays = samples.n_rays
        capacity = samples.capacity
        dtype = _activation_dtype(raw)
        raw = raw.to(dtype)
        s = raw[:, 0]  # [C]
        sigma = torch.exp(s)  # [C]
        colour = torch.sigmoid(raw[:, 1:4]).double()  # [C, 3]
        tau, transmittance, weights, active, capped = _weights(sigma, samples, min_transmittance)
        after = transmittance * torch.exp(-tau)  # [C], T_{i+1}

        weighted = torch.cat([weights[:, None] * colour, weights[:, None]], dim=1)  # [C, 4]
        sums = weighted.new_zeros((n_rays + 1, 4)).index_add(0, samples.ray_ids, weighted)
        opacity = sums[:n_rays, 3]  # [R]
        rgb = sums[:n_rays, :3] + (1.0 - opacity)[:, None] * background.double()  # [R, 3]
        error = rgb - target.double()  # [R, 3]
        valid = samples.ray_valid  # [R]
        loss = torch.where(valid, error.square().mean(dim=1), 0.0)  # [R]
        grad_rgb = torch.where(valid[:, None], error * (2.0 / 3.0), 0.0)  # [R, 3], g_k
        grad_opacity = -(grad_rgb * background.double()).sum(dim=1)  # [R], g_W
        # Per-ray gradients of every sample; padding reads the zero dummy row.
        per_ray = torch.cat([grad_rgb, grad_opacity[:, None]], dim=1)  # [R, 4]
        per_sample = torch.cat([per_ray, per_ray.new_zeros(1, 4)])[samples.ray_ids]  # [C, 4]
        g_rgb, g_opacity = per_sample[:, :3], per_sample[:, 3]  # [C, 3], [C]

        ends = samples.ray_starts + samples.ray_counts  # [R]
        end_index = _ray_index(ends, samples, capacity)  # [C]
        later = _segmented_exclusive_suffix_sum(weighted, end_index)  # [C, 4]: S^C, S^W
        d_sigma = samples.dt.double() * (
            (g_rgb * (after[:, None] * colour - later[:, :3])).sum(dim=1)
            + g_opacity * (after - later[:, 3])
        )  # [C]
        d_s = d_sigma * torch.exp(s.clamp(-_TRUNC_EXP_CLAMP, _TRUNC_EXP_CLAMP)).double()  # [C]
        d_s = torch.where(active & ~capped, d_s, 0.0)  # [C]
        d_colour = g_rgb * weights[:, None] * colour * (1.0 - colour)  # [C, 3]
        grad_raw = torch.cat([d_s[:, None], d_colour], dim=1)  # [C, 4]
    return loss.to(dtype), grad_raw.to(dtype)
