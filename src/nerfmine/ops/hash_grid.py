"""Multiresolution hash encoding with tiny-cuda-nn's semantics (Müller et al. 2022, Sec. 3).

The layout of the parameter table and the per-level geometry are described by
:class:`HashGridSpec`; the encoding itself is :func:`hash_grid_encode`, whose "torch" backend
(:func:`_hash_grid_encode_torch`) is the reference the Triton kernel is tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from nerfmine.ops.backends import check_backend, triton_module
from nerfmine.ops.hash_grid_spec import HASH_PRIMES, HashGridSpec

# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------

_UINT32_MASK = 0xFFFFFFFF


def hash_grid_indices_and_weights(
    x: Tensor, spec: HashGridSpec, level: int
) -> tuple[Tensor, Tensor]:
    """Global table rows and d-linear weights of the 2^d corners of each point at one level.

    ``x`` [N, d] in [0, 1] (d = ``spec.n_dims``; any float dtype; positions are computed in
    float32 as ``x * s_l + 0.5``, a multiply then an add). Corner k (0 .. 2^d - 1) has offset
    bit i of k along dimension i, i.e. k = cx_bit + 2 * cy_bit (+ 4 * cz_bit), tcnn's order.
    Returns ``indices`` [N, 2^d] int64 (rows of the flat table, level offset included, always
    inside the level's slice) and ``weights`` [N, 2^d] float32 (product over dims, x first, of
    ``frac`` or ``1 - frac``; each row sums to 1). Not differentiable (integer indices; weights
    are computed from a detached ``x``).
    """
    if not 0 <= level < spec.n_levels:
        raise ValueError(f"level must be in [0, {spec.n_levels}), got {level}")
    x32 = x.detach().to(torch.float32)  # [N, d]
    scale = torch.tensor(spec.scales[level], dtype=torch.float32, device=x.device)
    pos = x32 * scale + 0.5  # [N, d]
    cell_f = torch.floor(pos)  # [N, d]
    frac = pos - cell_f  # [N, d]
    cell = cell_f.to(torch.int64)  # [N, d]

    n_corners = spec.n_corners
    corner = torch.arange(n_corners, device=x.device)  # [C]
    dense = spec.dense_levels[level]
    res = spec.resolutions[level]
    idx = torch.zeros(x.shape[0], n_corners, dtype=torch.int64, device=x.device)  # [N, C]
    weights = torch.ones(x.shape[0], n_corners, dtype=torch.float32, device=x.device)  # [N, C]
    for dim in range(spec.n_dims):
        bit = (corner >> dim) & 1  # [C]
        coord = cell[:, dim : dim + 1] + bit  # [N, C]
        if dense:  # x + y res + z res^2
            idx += coord * res**dim
        else:  # (x * 1) ^ (y * 2654435761) ^ (z * 805459861)
            idx.bitwise_xor_(coord * HASH_PRIMES[dim])
        f = frac[:, dim : dim + 1]  # [N, 1]
        weights *= torch.where(bit.bool(), f, 1.0 - f)  # x first: ((wx * wy) * wz)
    # uint32 arithmetic as in tcnn (the low 32 bits of the int64 result), then mod the level size.
    idx.bitwise_and_(_UINT32_MASK).remainder_(spec.level_sizes[level])
    indices = idx.add_(spec.level_offsets[level])  # [N, C]
    return indices, weights


def _compute_dtype(table: Tensor) -> torch.dtype:
    """float64 tables (gradcheck) stay float64; everything else is computed in float32."""
    return torch.float64 if table.dtype == torch.float64 else torch.float32


def _encode_levels(x: Tensor, table: Tensor, spec: HashGridSpec) -> Tensor:
    """Forward pass, level by level: [N, d] -> [N, L*F]. No autograd bookkeeping."""
    dtype = _compute_dtype(table)
    n, f = x.shape[0], spec.n_features
    out = torch.empty(n, spec.n_levels * f, dtype=dtype, device=x.device)  # [N, L*F]
    for level in range(spec.n_levels):
        indices, weights = hash_grid_indices_and_weights(x, spec, level)  # [N, C], [N, C]
        values = table[indices].to(dtype)  # [N, C, F]
        out[:, level * f : (level + 1) * f] = torch.bmm(
            weights.to(dtype).unsqueeze(1), values
        ).squeeze(1)  # [N, F]
    return out


def _table_grad(x: Tensor, grad_out: Tensor, table: Tensor, spec: HashGridSpec,
                out: Tensor | None = None) -> Tensor:
    """d(sum(out * grad_out)) / d table: scatter-add of weight * upstream over points, corners.

    With ``out`` given the gradient is added into it in place (and ``out`` returned)."""
    dtype = _compute_dtype(table)
    f = spec.n_features
    if out is not None:
        dtype = out.dtype
        grad = out
    else:
        grad = torch.zeros(table.shape, dtype=dtype, device=table.device)  # [n_entries, F]
    grad_out = grad_out.to(dtype)
    for level in range(spec.n_levels):
        indices, weights = hash_grid_indices_and_weights(x, spec, level)  # [N, C], [N, C]
        g = grad_out[:, level * f : (level + 1) * f]  # [N, F]
        contrib = weights.to(dtype).unsqueeze(2) * g.unsqueeze(1)  # [N, C, F]
        grad.index_add_(0, indices.reshape(-1), contrib.reshape(-1, f))
    return grad if out is not None else grad.to(table.dtype)


class _HashGridEncodeTorch(torch.autograd.Function):
    """Recomputes indices and weights in the backward so only one level's [N, C] lives at once."""

    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, spec: HashGridSpec, grad_sink) -> Tensor:
        ctx.spec = spec
        ctx.grad_sink = grad_sink
        ctx.save_for_backward(x, table)
        return _encode_levels(x, table, spec)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, table = ctx.saved_tensors
        grad_table = None
        if ctx.needs_input_grad[1]:
            if ctx.grad_sink is not None:  # accumulate in place; table.grad is left alone
                _table_grad(x, grad_out, table, ctx.spec, out=ctx.grad_sink)
            else:
                grad_table = _table_grad(x, grad_out, table, ctx.spec)
        return None, grad_table, None, None


def _check_inputs(x: Tensor, table: Tensor, spec: HashGridSpec) -> None:
    if x.dim() != 2 or x.shape[1] != spec.n_dims:
        raise ValueError(f"x must have shape [N, {spec.n_dims}], got {tuple(x.shape)}")
    expected = (spec.n_entries, spec.n_features)
    if tuple(table.shape) != expected:
        raise ValueError(f"table must have shape {list(expected)}, got {list(table.shape)}")
    if x.device != table.device:
        raise ValueError(f"x is on {x.device} but table is on {table.device}")
    if not (x.is_floating_point() and table.is_floating_point()):
        raise ValueError(f"x and table must be floating point, got {x.dtype} and {table.dtype}")


def _check_sink(grad_sink: Tensor | None, table: Tensor) -> None:
    if grad_sink is not None and (grad_sink.shape != table.shape
                                  or grad_sink.device != table.device
                                  or not grad_sink.is_floating_point()):
        raise ValueError(f"grad_sink must be a floating-point tensor of the table's shape "
                         f"{list(table.shape)} on {table.device}, got {list(grad_sink.shape)} "
                         f"{grad_sink.dtype} on {grad_sink.device}")


def _hash_grid_encode_torch(x: Tensor, table: Tensor, spec: HashGridSpec,
                            grad_sink: Tensor | None = None) -> Tensor:
    """Pure-PyTorch reference of the hash encoding (the spec for the Triton kernel).

    ``x`` [N, d] in [0, 1] (d = ``spec.n_dims``), ``table`` [spec.n_entries, F] (fp16, fp32
    or fp64) -> [N, L*F], level-major (columns l*F .. l*F+F-1 hold level l). Gathered values are
    upcast and interpolated in float32 (float64 for a float64 table), and the output has that dtype.

    Differentiable with respect to ``table`` only (gradient: scatter-add of weight * upstream
    into the table rows, colliding points summed); ``x`` gets no gradient. The backward is not
    itself differentiable (no double backward).
    """
    _check_inputs(x, table, spec)
    _check_sink(grad_sink, table)
    return _HashGridEncodeTorch.apply(x, table, spec, grad_sink)


def hash_grid_encode(
    x: Tensor, table: Tensor, spec: HashGridSpec, backend: str = "torch",
    grad_sink: Tensor | None = None, table_fp16: Tensor | None = None,
) -> Tensor:
    """Multiresolution hash encoding: ``x`` [N, d] in [0, 1] -> features [N, L*F] float32
    (d = ``spec.n_dims``: 3 for the NeRF field, 2 for an image).

    ``table`` is the flat parameter table [spec.n_entries, spec.n_features] (level l occupies
    rows ``spec.level_offsets[l]`` to ``spec.level_offsets[l + 1]``). Output is level-major:
    features of level 0 first. Differentiable with respect to ``table``; ``x`` gets no gradient.
    ``backend``: "torch" (reference, any device) or "triton" (CUDA, or TRITON_INTERPRET=1).
    ``grad_sink``: a buffer of the table's shape; the backward then *adds* the table gradient
    into it in place and gives ``table`` no gradient of its own, so several backward passes (a
    chunked pass) accumulate into one preallocated buffer without a dense temporary each.
    ``table_fp16``: triton only, an fp16 copy of ``table`` that the caller keeps in sync (the
    kernel looks up fp16 values); without it each call makes one (a pass over the table).
    """
    check_backend("hash_grid_encode", backend)
    if backend == "torch":
        return _hash_grid_encode_torch(x, table, spec, grad_sink)
    _check_inputs(x, table, spec)
    _check_sink(grad_sink, table)
    module = triton_module("hash_grid", x, table)
    return module.hash_grid_encode_triton(x, table, spec, table_fp16=table_fp16,
                                          grad_sink=grad_sink)


def init_hash_table(
    spec: HashGridSpec,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A fresh table [spec.n_entries, spec.n_features] float32, entries U(-1e-4, 1e-4).

    Drawn on the generator's device (CPU if none is given) and then moved to ``device``, so a
    seeded CPU generator gives the same table on every device.
    """
    draw_device = generator.device if generator is not None else (device or "cpu")
    table = torch.empty(spec.n_entries, spec.n_features, dtype=torch.float32, device=draw_device)
    table.uniform_(-1e-4, 1e-4, generator=generator)
    return table.to(device) if device is not None else table
