"""Triton volume compositing over packed samples (the ``backend="triton"`` of
:mod:`nerfmine.ops.composite`).

One program per ray. A program walks the ray's contiguous samples
(``ray_starts[r] .. ray_starts[r] + ray_counts[r]``) in marching order, in chunks of ``BLOCK``
samples, and stops at early termination (transmittance before a sample below
``min_transmittance``). Within a chunk the transmittance comes from an exclusive prefix sum of
the optical depths tau_i = sigma_i dt_i (scan of the chunk's samples shifted by one, plus the
carry of the earlier chunks), so T_i = exp(-sum_{j<i} tau_j) is never formed by subtracting
sums.

Gradients (docs/design.md "Compositing", ../shared/docs/hard-sample-mining.md "Closed form"):
for sample i with T_{i+1} = T_i exp(-tau_i),

    d/dsigma_i = dt_i [ sum_k gC_k (T_{i+1} c_ik - S^C_k(>i)) + g_W T_final
                        + g_D (T_{i+1} t_i - S^D(>i)) ]

where S(>i) are suffix sums over the composited samples after i and T_final is the
transmittance after the last composited sample (the identity T_{i+1} - S^W(>i) = T_final). The
suffix sums are computed by a reverse walk over the chunks, with an in-chunk reverse scan of
the *next* sample's terms (again no subtraction of sums). The reverse walk needs T_i, which the
forward walk writes to a per-sample fp32 buffer (saved for backward in :func:`composite_triton`,
a scratch buffer in the fused :func:`composite_output_grads_triton`).

All accumulation is in fp32; ``raw`` may be fp16, bf16 or fp32 (upcast on load). Padding slots
and samples after termination get exactly 0 gradient. No host synchronisation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Chunk of samples a program handles at once. instant-ngp's marcher gives ~50 samples per ray at
# 2^18 samples / ~5000 rays, so 32 keeps most rays in one or two chunks without idle lanes.
DEFAULT_BLOCK = 32
DEFAULT_NUM_WARPS = 1
# Cap on one sample's optical depth, as in the reference (nerfmine.ops.composite): exp(-64) is
# below any transmittance threshold, so the cap changes no output, keeps inf * 0 and inf - inf
# out of the sums, and a capped sample gets zero density gradient (the clamp's derivative).
MAX_OPTICAL_DEPTH = 64.0


@triton.jit
def _load_sample(raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr, offs, mask):
    """Loads (s, c0, c1, c2, dt, t) of samples ``offs`` as fp32; masked lanes get s=0, dt=0."""
    row = raw_ptr + offs * stride_raw_row
    s = tl.load(row, mask=mask, other=0.0).to(tl.float32)
    c0 = tl.load(row + stride_raw_col, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(row + 2 * stride_raw_col, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(row + 3 * stride_raw_col, mask=mask, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return s, c0, c1, c2, dt, t


@triton.jit
def _optical_depth(s, dt, mask):
    """tau = min(trunc_exp(s) * dt, 64), exactly 0 on masked lanes (inf * 0 never appears)."""
    return tl.where(mask, tl.minimum(tl.exp(s) * dt, 64.0), 0.0)


@triton.jit
def _forward_walk(
    raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr, trans_ptr,
    start, count, min_transmittance,
    BLOCK: tl.constexpr,
):
    """Composites one ray. Writes T_i of every walked sample to ``trans_ptr``.

    Returns (C0, C1, C2, W, D, n_alive, T_final): colour, opacity and depth sums over the
    composited samples, how many samples were composited (a prefix of the ray) and the
    transmittance after the last of them.
    """
    lanes = tl.arange(0, BLOCK)
    acc_c0 = 0.0
    acc_c1 = 0.0
    acc_c2 = 0.0
    acc_w = 0.0
    acc_d = 0.0
    n_alive = 0
    log_t_alive = 0.0  # sum of tau over composited samples
    carry = 0.0  # sum of tau over the samples of the earlier chunks: T_chunk_start = exp(-carry)
    k = 0
    while (k < count) & (tl.exp(-carry) >= min_transmittance):
        offs = start + k + lanes
        mask = lanes < count - k
        s, c0, c1, c2, dt, t = _load_sample(
            raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr, offs, mask
        )
        tau = _optical_depth(s, dt, mask)
        # tau of the previous sample in the chunk (lane 0: the carry holds it).
        prev_mask = mask & (lanes > 0)
        s_prev = tl.load(raw_ptr + (offs - 1) * stride_raw_row, mask=prev_mask, other=0.0)
        dt_prev = tl.load(dt_ptr + offs - 1, mask=prev_mask, other=0.0)
        tau_prev = _optical_depth(s_prev.to(tl.float32), dt_prev.to(tl.float32), prev_mask)
        trans = tl.exp(-(carry + tl.cumsum(tau_prev, axis=0)))  # T_i
        tl.store(trans_ptr + offs, trans, mask=mask)
        alive = mask & (trans >= min_transmittance)
        alpha = 1.0 - tl.exp(-tau)
        w = tl.where(alive, trans * alpha, 0.0)
        acc_c0 += tl.sum(w * tl.sigmoid(c0), axis=0)
        acc_c1 += tl.sum(w * tl.sigmoid(c1), axis=0)
        acc_c2 += tl.sum(w * tl.sigmoid(c2), axis=0)
        acc_w += tl.sum(w, axis=0)
        acc_d += tl.sum(w * t, axis=0)
        n_alive += tl.sum(alive.to(tl.int32), axis=0)
        log_t_alive += tl.sum(tl.where(alive, tau, 0.0), axis=0)
        carry += tl.sum(tau, axis=0)
        k += BLOCK
    t_final = tl.exp(-log_t_alive)
    return acc_c0, acc_c1, acc_c2, acc_w, acc_d, n_alive, t_final


@triton.jit
def _sample_weight_terms(trans, s, c0, c1, c2, dt, t, mask, min_transmittance):
    """(alive, w, w c0, w c1, w c2, w t, sigmoid colours) of samples with transmittance T."""
    alive = mask & (trans >= min_transmittance)
    tau = _optical_depth(s, dt, mask)
    w = tl.where(alive, trans * (1.0 - tl.exp(-tau)), 0.0)
    col0 = tl.sigmoid(c0)
    col1 = tl.sigmoid(c1)
    col2 = tl.sigmoid(c2)
    return alive, tau, w, w * col0, w * col1, w * col2, w * t, col0, col1, col2


@triton.jit
def _reverse_walk(
    raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr, trans_ptr,
    grad_ptr, stride_grad_row, stride_grad_col,
    start, n_alive, min_transmittance,
    g0, g1, g2, g_w, g_d, t_final,
    BLOCK: tl.constexpr,
):
    """Writes d(loss)/d raw of the composited samples of one ray (walking chunks backwards).

    (g0, g1, g2) = d loss / d C, g_w = d loss / d W (incl. the background term), g_d = d loss / d D.
    Samples past ``n_alive`` are not written (the caller zero-fills).
    """
    lanes = tl.arange(0, BLOCK)
    suf_c0 = 0.0  # suffix sums over the chunks after the current one
    suf_c1 = 0.0
    suf_c2 = 0.0
    suf_d = 0.0
    k = ((n_alive + BLOCK - 1) // BLOCK - 1) * BLOCK
    while k >= 0:
        offs = start + k + lanes
        mask = lanes < n_alive - k
        s, c0, c1, c2, dt, t = _load_sample(
            raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr, offs, mask
        )
        trans = tl.load(trans_ptr + offs, mask=mask, other=0.0)
        alive, tau, w, wc0, wc1, wc2, wt, col0, col1, col2 = _sample_weight_terms(
            trans, s, c0, c1, c2, dt, t, mask, min_transmittance
        )
        # Terms of the next sample in the chunk (last lane: the carried suffix holds it).
        next_mask = (lanes < n_alive - k - 1) & (lanes < BLOCK - 1)
        sn, cn0, cn1, cn2, dtn, tn = _load_sample(
            raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr, offs + 1, next_mask
        )
        trans_n = tl.load(trans_ptr + offs + 1, mask=next_mask, other=0.0)
        _a, _tau, _w, wcn0, wcn1, wcn2, wtn, _x0, _x1, _x2 = _sample_weight_terms(
            trans_n, sn, cn0, cn1, cn2, dtn, tn, next_mask, min_transmittance
        )
        s_c0 = suf_c0 + tl.cumsum(wcn0, axis=0, reverse=True)  # S^C_0(>i)
        s_c1 = suf_c1 + tl.cumsum(wcn1, axis=0, reverse=True)
        s_c2 = suf_c2 + tl.cumsum(wcn2, axis=0, reverse=True)
        s_d = suf_d + tl.cumsum(wtn, axis=0, reverse=True)
        trans_next = trans * tl.exp(-tau)  # T_{i+1}
        d_sigma = dt * (
            g0 * (trans_next * col0 - s_c0)
            + g1 * (trans_next * col1 - s_c1)
            + g2 * (trans_next * col2 - s_c2)
            + g_w * t_final
            + g_d * (trans_next * t - s_d)
        )
        d_s = d_sigma * tl.exp(tl.minimum(tl.maximum(s, -15.0), 15.0))
        d_s = tl.where(alive & (tau < 64.0), d_s, 0.0)
        d_c0 = tl.where(alive, g0 * w * col0 * (1.0 - col0), 0.0)
        d_c1 = tl.where(alive, g1 * w * col1 * (1.0 - col1), 0.0)
        d_c2 = tl.where(alive, g2 * w * col2 * (1.0 - col2), 0.0)
        grow = grad_ptr + offs * stride_grad_row
        tl.store(grow, d_s, mask=mask)
        tl.store(grow + stride_grad_col, d_c0, mask=mask)
        tl.store(grow + 2 * stride_grad_col, d_c1, mask=mask)
        tl.store(grow + 3 * stride_grad_col, d_c2, mask=mask)
        suf_c0 += tl.sum(wc0, axis=0)
        suf_c1 += tl.sum(wc1, axis=0)
        suf_c2 += tl.sum(wc2, axis=0)
        suf_d += tl.sum(wt, axis=0)
        k -= BLOCK


@triton.jit
def _composite_fwd_kernel(
    raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr,
    ray_starts_ptr, ray_counts_ptr, bg_ptr, stride_bg_row, stride_bg_col,
    rgb_ptr, opacity_ptr, depth_ptr, n_alive_ptr, t_final_ptr, trans_ptr,
    min_transmittance,
    BLOCK: tl.constexpr,
):
    ray = tl.program_id(0).to(tl.int64)
    start = tl.load(ray_starts_ptr + ray)
    count = tl.load(ray_counts_ptr + ray)
    c0, c1, c2, w, d, n_alive, t_final = _forward_walk(
        raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr, trans_ptr,
        start, count, min_transmittance, BLOCK,
    )
    bg = bg_ptr + ray * stride_bg_row
    bg0 = tl.load(bg).to(tl.float32)
    bg1 = tl.load(bg + stride_bg_col).to(tl.float32)
    bg2 = tl.load(bg + 2 * stride_bg_col).to(tl.float32)
    tl.store(rgb_ptr + ray * 3, c0 + (1.0 - w) * bg0)
    tl.store(rgb_ptr + ray * 3 + 1, c1 + (1.0 - w) * bg1)
    tl.store(rgb_ptr + ray * 3 + 2, c2 + (1.0 - w) * bg2)
    tl.store(opacity_ptr + ray, w)
    tl.store(depth_ptr + ray, d)
    tl.store(n_alive_ptr + ray, n_alive)
    tl.store(t_final_ptr + ray, t_final)


@triton.jit
def _composite_bwd_kernel(
    raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr,
    ray_starts_ptr, bg_ptr, stride_bg_row, stride_bg_col,
    n_alive_ptr, t_final_ptr, trans_ptr,
    grad_rgb_ptr, stride_grgb_row, stride_grgb_col, grad_opacity_ptr, grad_depth_ptr,
    grad_raw_ptr, stride_grad_row, stride_grad_col,
    min_transmittance,
    BLOCK: tl.constexpr,
):
    ray = tl.program_id(0).to(tl.int64)
    start = tl.load(ray_starts_ptr + ray)
    n_alive = tl.load(n_alive_ptr + ray)
    t_final = tl.load(t_final_ptr + ray)
    grgb = grad_rgb_ptr + ray * stride_grgb_row
    g0 = tl.load(grgb).to(tl.float32)
    g1 = tl.load(grgb + stride_grgb_col).to(tl.float32)
    g2 = tl.load(grgb + 2 * stride_grgb_col).to(tl.float32)
    bg = bg_ptr + ray * stride_bg_row
    bg0 = tl.load(bg).to(tl.float32)
    bg1 = tl.load(bg + stride_bg_col).to(tl.float32)
    bg2 = tl.load(bg + 2 * stride_bg_col).to(tl.float32)
    # rgb = C + (1 - W) bg, so W also reaches the loss through the background.
    g_w = tl.load(grad_opacity_ptr + ray).to(tl.float32) - (g0 * bg0 + g1 * bg1 + g2 * bg2)
    g_d = tl.load(grad_depth_ptr + ray).to(tl.float32)
    _reverse_walk(
        raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr, trans_ptr,
        grad_raw_ptr, stride_grad_row, stride_grad_col,
        start, n_alive, min_transmittance,
        g0, g1, g2, g_w, g_d, t_final, BLOCK,
    )


@triton.jit
def _composite_output_grads_kernel(
    raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr,
    ray_starts_ptr, ray_counts_ptr, ray_valid_ptr,
    bg_ptr, stride_bg_row, stride_bg_col, target_ptr, stride_tg_row, stride_tg_col,
    loss_ptr, grad_raw_ptr, stride_grad_row, stride_grad_col, trans_ptr,
    min_transmittance,
    BLOCK: tl.constexpr,
):
    ray = tl.program_id(0).to(tl.int64)
    start = tl.load(ray_starts_ptr + ray)
    valid = tl.load(ray_valid_ptr + ray) != 0
    # An invalid (dropped) ray composites nothing and gets no gradient.
    count = tl.where(valid, tl.load(ray_counts_ptr + ray), 0)
    c0, c1, c2, w, _d, n_alive, t_final = _forward_walk(
        raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr, trans_ptr,
        start, count, min_transmittance, BLOCK,
    )
    bg = bg_ptr + ray * stride_bg_row
    bg0 = tl.load(bg).to(tl.float32)
    bg1 = tl.load(bg + stride_bg_col).to(tl.float32)
    bg2 = tl.load(bg + 2 * stride_bg_col).to(tl.float32)
    tg = target_ptr + ray * stride_tg_row
    e0 = c0 + (1.0 - w) * bg0 - tl.load(tg).to(tl.float32)
    e1 = c1 + (1.0 - w) * bg1 - tl.load(tg + stride_tg_col).to(tl.float32)
    e2 = c2 + (1.0 - w) * bg2 - tl.load(tg + 2 * stride_tg_col).to(tl.float32)
    loss = (e0 * e0 + e1 * e1 + e2 * e2) / 3.0
    tl.store(loss_ptr + ray, tl.where(valid, loss, 0.0))
    # d l / d C_hat = (2/3)(C_hat - gt); d l / d W = -sum_k g_k bg_k.
    g0 = e0 * (2.0 / 3.0)
    g1 = e1 * (2.0 / 3.0)
    g2 = e2 * (2.0 / 3.0)
    g_w = -(g0 * bg0 + g1 * bg1 + g2 * bg2)
    # The reverse walk reads T of neighbouring samples written by other threads.
    tl.debug_barrier()
    _reverse_walk(
        raw_ptr, stride_raw_row, stride_raw_col, dt_ptr, t_ptr, trans_ptr,
        grad_raw_ptr, stride_grad_row, stride_grad_col,
        start, n_alive, min_transmittance,
        g0, g1, g2, g_w, 0.0, t_final, BLOCK,
    )


def _check_inputs(raw: torch.Tensor, samples, background: torch.Tensor) -> None:
    if raw.dim() != 2 or raw.shape[1] != 4:
        raise ValueError(f"raw must be [C, 4], got {list(raw.shape)}")
    if raw.shape[0] != samples.dt.shape[0]:
        raise ValueError(
            f"raw has {raw.shape[0]} rows but the samples have capacity {samples.dt.shape[0]}"
        )
    if background.shape != (samples.n_rays, 3):
        raise ValueError(
            f"background must be [n_rays, 3] = [{samples.n_rays}, 3], got {list(background.shape)}"
        )


class _CompositeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, raw, dt, t, ray_starts, ray_counts, background, min_transmittance, block):
        n_rays = ray_starts.shape[0]
        device = raw.device
        rgb = torch.empty(n_rays, 3, dtype=torch.float32, device=device)
        opacity = torch.empty(n_rays, dtype=torch.float32, device=device)
        depth = torch.empty(n_rays, dtype=torch.float32, device=device)
        n_alive = torch.empty(n_rays, dtype=torch.int32, device=device)
        t_final = torch.empty(n_rays, dtype=torch.float32, device=device)
        trans = torch.empty(raw.shape[0], dtype=torch.float32, device=device)  # T_i per sample
        if n_rays > 0:
            _composite_fwd_kernel[(n_rays,)](
                raw, raw.stride(0), raw.stride(1), dt, t,
                ray_starts, ray_counts, background, background.stride(0), background.stride(1),
                rgb, opacity, depth, n_alive, t_final, trans,
                float(min_transmittance),
                BLOCK=block, num_warps=DEFAULT_NUM_WARPS,
            )
        ctx.save_for_backward(raw, dt, t, ray_starts, background, n_alive, t_final, trans)
        ctx.min_transmittance = float(min_transmittance)
        ctx.block = block
        ctx.mark_non_differentiable(n_alive)
        return rgb, opacity, depth

    @staticmethod
    def backward(ctx, grad_rgb, grad_opacity, grad_depth):
        raw, dt, t, ray_starts, background, n_alive, t_final, trans = ctx.saved_tensors
        n_rays = ray_starts.shape[0]
        device = raw.device
        if grad_rgb is None:
            grad_rgb = torch.zeros(n_rays, 3, dtype=torch.float32, device=device)
        if grad_opacity is None:
            grad_opacity = torch.zeros(n_rays, dtype=torch.float32, device=device)
        if grad_depth is None:
            grad_depth = torch.zeros(n_rays, dtype=torch.float32, device=device)
        grad_opacity = grad_opacity.contiguous()
        grad_depth = grad_depth.contiguous()
        grad_raw = torch.zeros(raw.shape[0], 4, dtype=torch.float32, device=device)
        if n_rays > 0:
            _composite_bwd_kernel[(n_rays,)](
                raw, raw.stride(0), raw.stride(1), dt, t,
                ray_starts, background, background.stride(0), background.stride(1),
                n_alive, t_final, trans,
                grad_rgb, grad_rgb.stride(0), grad_rgb.stride(1), grad_opacity, grad_depth,
                grad_raw, grad_raw.stride(0), grad_raw.stride(1),
                ctx.min_transmittance,
                BLOCK=ctx.block, num_warps=DEFAULT_NUM_WARPS,
            )
        return grad_raw.to(raw.dtype), None, None, None, None, None, None, None


def composite_triton(
    raw: torch.Tensor,
    samples,
    background: torch.Tensor,
    min_transmittance: float = 1e-4,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Volume compositing of packed samples; Triton twin of ``composite(..., backend="torch")``.

    raw: [C, 4] pre-activation outputs (fp32/fp16/bf16); samples: PackedSamples;
    background: [R, 3]. Returns rgb [R, 3], opacity [R], depth [R] (fp32), differentiable with
    respect to ``raw`` only (background, dt and t get no gradient).
    """
    _check_inputs(raw, samples, background)
    return _CompositeTriton.apply(
        raw,
        samples.dt.contiguous(),
        samples.t.contiguous(),
        samples.ray_starts.contiguous(),
        samples.ray_counts.contiguous(),
        background,
        min_transmittance,
        block,
    )


def composite_output_grads_triton(
    raw: torch.Tensor,
    samples,
    background: torch.Tensor,
    target: torch.Tensor,
    min_transmittance: float = 1e-4,
    block: int = DEFAULT_BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused forward + closed-form output gradients (hard-sample-mining.md, step 4).

    Returns loss_per_ray [R] (mean over RGB of the squared error; 0 for invalid rays) and
    grad_raw [C, 4] fp32 = d(sum_r loss_r)/d raw (no graph; exactly 0 for padding slots,
    terminated samples and the samples of invalid rays).
    """
    _check_inputs(raw, samples, background)
    if target.shape != background.shape:
        raise ValueError(f"target must be [n_rays, 3], got {list(target.shape)}")
    n_rays = samples.n_rays
    device = raw.device
    loss = torch.empty(n_rays, dtype=torch.float32, device=device)
    grad_raw = torch.zeros(raw.shape[0], 4, dtype=torch.float32, device=device)
    trans = torch.empty(raw.shape[0], dtype=torch.float32, device=device)  # scratch T_i
    if n_rays > 0:
        _composite_output_grads_kernel[(n_rays,)](
            raw, raw.stride(0), raw.stride(1), samples.dt.contiguous(), samples.t.contiguous(),
            samples.ray_starts.contiguous(), samples.ray_counts.contiguous(),
            samples.ray_valid.contiguous(),
            background, background.stride(0), background.stride(1),
            target, target.stride(0), target.stride(1),
            loss, grad_raw, grad_raw.stride(0), grad_raw.stride(1), trans,
            float(min_transmittance),
            BLOCK=block, num_warps=DEFAULT_NUM_WARPS,
        )
    return loss, grad_raw
