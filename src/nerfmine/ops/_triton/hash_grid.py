"""Triton multiresolution hash encoding (semantics: :mod:`nerfmine.ops.hash_grid`).

Forward
    Grid ``(point blocks, levels)``; the level is the slow grid axis, so the programs running at
    one time work on one level and its table stays in L2 (2 MiB of fp16 pairs at T = 2^19).
    Dense levels (a prefix of the levels: resolutions grow) and hashed levels are two launches of
    one kernel specialised on a constexpr ``DENSE``: no runtime branch on the indexing. Per-level
    parameters (scale, resolution, size, row offset) come from two tiny device tensors.
    Each corner is ONE 4-byte gather of the packed fp16 feature pair (the fp16 table viewed as
    int32), unpacked in registers; interpolation is accumulated in fp32; the output is fp32.
    A 2-D grid (an image) is the same kernel with the constexpr ``DIMS = 2``: no z load, 4
    corners, the z terms zero. Index arithmetic is uint32 exactly as tcnn: hashed
    ``(x * 1) ^ (y * 2654435761) ^ (z * 805459861)`` wrapping in uint32 then ``& (T - 1)``
    (hashed levels always have T = 2^k entries); dense ``(x + y res + z res^2) % size`` in
    uint32 (the reference's ``& 0xFFFFFFFF`` then ``% size`` on int64 gives the same bits).

Backward (table only; ``x`` gets no gradient)
    fp32 gradient buffer ``[n_entries, 2]``, scatter-add of ``weight * grad_out``.
    * Both features of an entry go in one atomic on the packed pair: the atomics are issued on a
      ``[., 2]`` block whose last axis is contiguous and 8-byte aligned, which Triton lowers to a
      vector ``atom.global.v2.f32.add`` on sm_90 (one L2 transaction per corner, not two), with
      ``sem="relaxed"`` (no fences).
    * Contention (level 0: 4096 entries hit by 2^21 corner updates) is cut by a run-length
      pre-reduction (``_hash_grid_bwd_runs_kernel``): NeRF samples of a ray are contiguous,
      ~40 consecutive samples share a level-0 cell and still a few share a level-8 cell, and
      consecutive points in one cell share all 2^d corner rows. Each point recomputes the cells
      of its neighbours (positions offs - 1 and offs + 1: cached loads, no register gather), a
      segmented scan along the block sums each run, and only a run's last point issues its 2^d
      atomics. ``PRE_REDUCE`` (or ``pre_reduce=``) switches it off. It roughly halves the
      backward on ray-ordered points and costs ~2% on random ones (BENCHMARKS.md, "The hash
      grid's backward with run-length pre-reduction").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from nerfmine.ops.hash_grid_spec import HashGridSpec

# Module-level tuning switches (read at launch time).
PRE_REDUCE = True  # run-length pre-reduction in the backward, all levels
FWD_BLOCK = 256
BWD_BLOCK = 256
BWD_RUNS_BLOCK = 256  # points per program of the run-reduced backward
# No FMA contraction: ``x * s + 0.5`` is rounded twice, as in the reference, so both backends
# pick the same cell; at s ~ 2047 one fp32 ulp of the position is 2.4e-4 of a cell, which an
# FMA would otherwise show as a 2e-4 relative difference in the fine levels' outputs.
FP_FUSION = False


@triton.jit
def _cell(x_ptr, offs, mask, scale_ptr, lp_ptr, level, DIMS: tl.constexpr):
    """Cell coordinates (uint32) and fractional positions (fp32) of points at one level.

    A 2-D point is the 3-D point (x, y, 0) whose z corners are never visited: cz = 0 and
    wz1 = 0, so the hash's z term and the dense index's z res^2 term vanish and the weights
    (wy * wx) * (1 - 0) are the bilinear ones, bit for bit."""
    scale = tl.load(scale_ptr + level)
    px = tl.load(x_ptr + offs * DIMS + 0, mask=mask, other=0.0).to(tl.float32)
    py = tl.load(x_ptr + offs * DIMS + 1, mask=mask, other=0.0).to(tl.float32)
    px = px * scale + 0.5
    py = py * scale + 0.5
    fx = tl.floor(px)
    fy = tl.floor(py)
    cx = fx.to(tl.int32).to(tl.uint32, bitcast=True)
    cy = fy.to(tl.int32).to(tl.uint32, bitcast=True)
    if DIMS == 3:
        pz = tl.load(x_ptr + offs * DIMS + 2, mask=mask, other=0.0).to(tl.float32)
        pz = pz * scale + 0.5
        fz = tl.floor(pz)
        cz = fz.to(tl.int32).to(tl.uint32, bitcast=True)
        wz1 = pz - fz
    else:
        cz = tl.zeros_like(cx)
        wz1 = tl.zeros_like(px)
    return cx, cy, cz, px - fx, py - fy, wz1


@triton.jit
def _row(cx, cy, cz, res, size, offset, DENSE: tl.constexpr):
    """Global table row (int32) of corner cells (uint32), tcnn's grid_index."""
    if DENSE:
        r = res.to(tl.uint32)
        idx = (cx + cy * r + cz * (r * r)) % size.to(tl.uint32)
    else:
        idx = (cx ^ (cy * 2654435761) ^ (cz * 805459861)) & (size - 1).to(tl.uint32)
    return idx.to(tl.int32) + offset


@triton.jit
def _hash_grid_fwd_kernel(
    x_ptr, tab_ptr, out_ptr, scale_ptr, lp_ptr, N, level_base,
    OUT_STRIDE: tl.constexpr, DENSE: tl.constexpr, DIMS: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    level = tl.program_id(1) + level_base
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    res = tl.load(lp_ptr + level * 4 + 0)
    size = tl.load(lp_ptr + level * 4 + 1)
    offset = tl.load(lp_ptr + level * 4 + 2)
    cx, cy, cz, wx1, wy1, wz1 = _cell(x_ptr, offs, mask, scale_ptr, lp_ptr, level, DIMS)
    acc0 = tl.zeros((BLOCK,), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in tl.static_range(1 << DIMS):  # corners: 4 (2-D) or 8 (3-D)
        bx = k & 1
        by = (k >> 1) & 1
        bz = (k >> 2) & 1
        row = _row(cx + bx, cy + by, cz + bz, res, size, offset, DENSE)
        wx = wx1 if bx else 1.0 - wx1
        wy = wy1 if by else 1.0 - wy1
        wz = wz1 if bz else 1.0 - wz1
        w = (wy * wx) * wz
        v = tl.load(tab_ptr + row, mask=mask, other=0)  # packed fp16 pair as int32
        f0 = (v & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        f1 = (v >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        acc0 += w * f0
        acc1 += w * f1
    cols = tl.arange(0, 2)
    ptrs = out_ptr + offs[:, None] * OUT_STRIDE + level * 2 + cols[None, :]
    tl.store(ptrs, tl.join(acc0, acc1), mask=mask[:, None])


@triton.jit
def _hash_grid_bwd_kernel(
    x_ptr, gout_ptr, grad_ptr, scale_ptr, lp_ptr, N, level_base,
    OUT_STRIDE: tl.constexpr, DENSE: tl.constexpr, DIMS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Plain scatter: one packed-pair atomic per (point, corner)."""
    pid = tl.program_id(0)
    level = tl.program_id(1) + level_base
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    res = tl.load(lp_ptr + level * 4 + 0)
    size = tl.load(lp_ptr + level * 4 + 1)
    offset = tl.load(lp_ptr + level * 4 + 2)
    cx, cy, cz, wx1, wy1, wz1 = _cell(x_ptr, offs, mask, scale_ptr, lp_ptr, level, DIMS)
    cols = tl.arange(0, 2)
    g = tl.load(gout_ptr + offs[:, None] * OUT_STRIDE + level * 2 + cols[None, :],
                mask=mask[:, None], other=0.0).to(tl.float32)  # [BLOCK, 2]
    for k in tl.static_range(1 << DIMS):  # corners: 4 (2-D) or 8 (3-D)
        bx = k & 1
        by = (k >> 1) & 1
        bz = (k >> 2) & 1
        row = _row(cx + bx, cy + by, cz + bz, res, size, offset, DENSE)
        wx = wx1 if bx else 1.0 - wx1
        wy = wy1 if by else 1.0 - wy1
        wz = wz1 if bz else 1.0 - wz1
        w = (wy * wx) * wz
        ptrs = grad_ptr + row[:, None] * 2 + cols[None, :]
        tl.atomic_add(ptrs, w[:, None] * g, mask=mask[:, None], sem="relaxed")


@triton.jit
def _seg_combine(a0, a1, fa, b0, b1, fb):
    """Segmented inclusive sum: a segment start (flag 1) resets the running sums."""
    restart = fb != 0
    return tl.where(restart, b0, a0 + b0), tl.where(restart, b1, a1 + b1), fa | fb


@triton.jit
def _hash_grid_bwd_runs_kernel(
    x_ptr, gout_ptr, grad_ptr, scale_ptr, lp_ptr, N, level_base,
    OUT_STRIDE: tl.constexpr, DENSE: tl.constexpr, DIMS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Run-length pre-reduction: consecutive points in the same cell share all 8 corner rows.

    The cells of the previous and next points are recomputed from their positions (no gather),
    a segmented scan along the block sums each run, and only a run's last point issues its 2^d
    packed-pair atomics.
    """
    pid = tl.program_id(0)
    level = tl.program_id(1) + level_base
    lane = tl.arange(0, BLOCK)
    offs = pid.to(tl.int64) * BLOCK + lane
    mask = offs < N
    res = tl.load(lp_ptr + level * 4 + 0)
    size = tl.load(lp_ptr + level * 4 + 1)
    offset = tl.load(lp_ptr + level * 4 + 2)
    cx, cy, cz, wx1, wy1, wz1 = _cell(x_ptr, offs, mask, scale_ptr, lp_ptr, level, DIMS)
    px, py, pz, _, _, _ = _cell(x_ptr, offs - 1, mask & (lane > 0), scale_ptr, lp_ptr, level,
                                DIMS)
    nx, ny, nz, _, _, _ = _cell(x_ptr, offs + 1, (offs + 1 < N) & (lane < BLOCK - 1),
                                scale_ptr, lp_ptr, level, DIMS)
    start = (lane == 0) | (cx != px) | (cy != py) | (cz != pz)
    end = (lane == BLOCK - 1) | (offs + 1 >= N) | (cx != nx) | (cy != ny) | (cz != nz)
    g0 = tl.load(gout_ptr + offs * OUT_STRIDE + level * 2 + 0, mask=mask, other=0.0)
    g1 = tl.load(gout_ptr + offs * OUT_STRIDE + level * 2 + 1, mask=mask, other=0.0)
    # [BLOCK, C] corners (C = 2^DIMS), corner k = bx + 2 by + 4 bz.
    CORNERS: tl.constexpr = 1 << DIMS
    k = tl.arange(0, CORNERS)[None, :]
    bx = (k & 1).to(tl.uint32)
    by = ((k >> 1) & 1).to(tl.uint32)
    bz = ((k >> 2) & 1).to(tl.uint32)
    row = _row(cx[:, None] + bx, cy[:, None] + by, cz[:, None] + bz, res, size, offset, DENSE)
    wx = tl.where(bx != 0, wx1[:, None], 1.0 - wx1[:, None])
    wy = tl.where(by != 0, wy1[:, None], 1.0 - wy1[:, None])
    wz = tl.where(bz != 0, wz1[:, None], 1.0 - wz1[:, None])
    w = (wy * wx) * wz  # [BLOCK, C]
    v0 = w * g0.to(tl.float32)[:, None]
    v1 = w * g1.to(tl.float32)[:, None]
    flag = tl.broadcast_to(start.to(tl.int32)[:, None], (BLOCK, CORNERS))
    t0, t1, _ = tl.associative_scan((v0, v1, flag), 0, _seg_combine)
    cols = tl.arange(0, 2)
    ptrs = grad_ptr + row[:, :, None] * 2 + cols[None, None, :]
    write = tl.broadcast_to((end & mask)[:, None, None], (BLOCK, CORNERS, 2))
    tl.atomic_add(ptrs, tl.join(t0, t1), mask=write, sem="relaxed")


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------

_PARAM_CACHE: dict = {}


def _level_params(spec: HashGridSpec, device: torch.device):
    """(scales fp32 [L], int32 [L, 4] = res, size, row offset, dense; n_dense), cached."""
    key = (spec, str(device))
    hit = _PARAM_CACHE.get(key)
    if hit is None:
        if spec.n_features != 2:
            raise ValueError(f"the Triton hash grid supports n_features=2, got {spec.n_features}")
        dense = list(spec.dense_levels)
        n_dense = sum(dense)
        if dense != [True] * n_dense + [False] * (spec.n_levels - n_dense):
            raise ValueError("the Triton hash grid needs the dense levels to come first")
        for level in range(n_dense, spec.n_levels):
            size = spec.level_sizes[level]
            if size & (size - 1):
                raise ValueError(f"hashed level {level} has {size} entries, not a power of two")
        if spec.n_entries >= 2**30:
            raise ValueError(f"table of {spec.n_entries} rows is too large for int32 indexing")
        scales = torch.tensor(spec.scales, dtype=torch.float32)
        ints = torch.tensor(
            [[r, s, o, int(d)] for r, s, o, d in zip(
                spec.resolutions, spec.level_sizes, spec.level_offsets, dense, strict=False)],
            dtype=torch.int32,
        )
        hit = (scales.to(device), ints.to(device), n_dense)
        _PARAM_CACHE[key] = hit
    return hit


def _launch_levels(kernel, args, spec, n_points, n_dense, block, **meta):
    """Launch ``kernel`` on the dense levels then on the hashed levels (constexpr DENSE)."""
    n_blocks = triton.cdiv(n_points, block)
    for dense, base, count in ((True, 0, n_dense), (False, n_dense, spec.n_levels - n_dense)):
        if count > 0 and n_blocks > 0:
            kernel[(n_blocks, count)](*args, n_points, base, OUT_STRIDE=spec.n_levels * 2,
                                      DENSE=dense, DIMS=spec.n_dims, BLOCK=block, **meta)


def _forward(x: Tensor, table_fp16: Tensor, spec: HashGridSpec) -> Tensor:
    scales, ints, n_dense = _level_params(spec, x.device)
    n = x.shape[0]
    out = torch.empty(n, spec.n_levels * 2, dtype=torch.float32, device=x.device)
    tab32 = table_fp16.view(torch.int32).reshape(-1)  # packed (f0, f1) fp16 pairs
    _launch_levels(_hash_grid_fwd_kernel, (x, tab32, out, scales, ints), spec, n, n_dense,
                   FWD_BLOCK, num_warps=4, enable_fp_fusion=FP_FUSION)
    return out


def hash_grid_backward_triton(
    x: Tensor, grad_out: Tensor, spec: HashGridSpec, pre_reduce: bool | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """d(sum(out * grad_out)) / d table as an fp32 [n_entries, 2] buffer.

    ``pre_reduce`` (default: the module's ``PRE_REDUCE``): run-length pre-reduction of
    consecutive points sharing a cell before the atomics; False: one atomic per point and corner.
    ``out``: an fp32 contiguous [n_entries, 2] buffer to add the gradient into (returned).
    """
    scales, ints, n_dense = _level_params(spec, x.device)
    if pre_reduce is None:
        pre_reduce = PRE_REDUCE
    n = x.shape[0]
    grad_out = grad_out.contiguous()
    if out is not None:
        if out.dtype != torch.float32 or not out.is_contiguous():
            raise ValueError("the Triton hash-grid backward accumulates into a contiguous "
                             f"float32 buffer, got {out.dtype}")
        grad = out
    else:
        grad = torch.zeros(spec.n_entries, 2, dtype=torch.float32, device=x.device)
    if pre_reduce:
        kernel, block = _hash_grid_bwd_runs_kernel, BWD_RUNS_BLOCK
    else:
        kernel, block = _hash_grid_bwd_kernel, BWD_BLOCK
    _launch_levels(kernel, (x, grad_out, grad, scales, ints), spec, n, n_dense, block,
                   num_warps=4, enable_fp_fusion=FP_FUSION)
    return grad


class _HashGridEncode(torch.autograd.Function):
    """Forward from the fp16 lookup table; backward scatters into the (fp32) master table."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, table_fp16: Tensor, spec: HashGridSpec,
                grad_sink) -> Tensor:
        ctx.spec = spec
        ctx.grad_sink = grad_sink
        ctx.table_dtype = table.dtype
        ctx.save_for_backward(x)
        return _forward(x, table_fp16, spec)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        (x,) = ctx.saved_tensors
        grad_table = None
        if ctx.needs_input_grad[1]:
            if ctx.grad_sink is not None:  # accumulate in place; table.grad is left alone
                hash_grid_backward_triton(x, grad_out, ctx.spec, out=ctx.grad_sink)
                return None, None, None, None, None
            grad_table = hash_grid_backward_triton(x, grad_out, ctx.spec)
            if ctx.table_dtype != torch.float32:
                grad_table = grad_table.to(ctx.table_dtype)
        return None, grad_table, None, None, None


def hash_grid_encode_triton(
    x: Tensor, table: Tensor, spec: HashGridSpec, table_fp16: Tensor | None = None,
    grad_sink: Tensor | None = None,
) -> Tensor:
    """Hash encoding ``x`` [N, d] in [0, 1] -> [N, L*2] float32, differentiable w.r.t. ``table``
    (d = ``spec.n_dims``, 2 or 3).

    ``table`` [spec.n_entries, 2]: the fp32 master parameters (gradients flow to it).
    ``table_fp16``: the fp16 lookup copy when the caller keeps one in sync (e.g. through
    ``adam_step(..., param_fp16=...)``); otherwise ``table.half()`` is made here (one extra pass).
    Lookups are fp16, interpolation fp32: the output differs from the fp32 reference by the fp16
    rounding of the table (relative ~5e-4 of the feature scale).
    """
    if x.dim() != 2 or x.shape[1] != spec.n_dims:
        raise ValueError(f"x must have shape [N, {spec.n_dims}], got {tuple(x.shape)}")
    if tuple(table.shape) != (spec.n_entries, spec.n_features):
        raise ValueError(f"table must have shape [{spec.n_entries}, {spec.n_features}], "
                         f"got {list(table.shape)}")
    if table_fp16 is None:
        table_fp16 = table.detach().to(torch.float16)
    elif table_fp16.dtype != torch.float16 or table_fp16.shape != table.shape:
        raise ValueError("table_fp16 must be float16 with the table's shape, got "
                         f"{table_fp16.dtype} {list(table_fp16.shape)}")
    table_fp16 = table_fp16.detach().contiguous()
    x = x.detach().to(torch.float32).contiguous()
    return _HashGridEncode.apply(x, table, table_fp16, spec, grad_sink)
