"""Triton: the miner's importance, exponential race and selection without a sort.

Semantics (the reference is :mod:`nerfmine.ops.mining`'s torch backend; the selection equals
:func:`nerfmine.ops.mining.select_by_keys` on the same keys):

* ``G_i = ||grad_raw_i||_2`` for slots ``i < n`` (0 on padding slots), float32;
* ``key_i = log G_i - log E_i`` with ``E_i = -log U_i``, ``U_i`` uniform from Triton's Philox
  stream ``(seed, i)`` (``E`` clamped to the smallest normal float, as the torch path does);
  slots whose ``G`` is not > 0 (0, NaN, padding) take no part;
* the ``b`` largest keys (ties: lower index first) are drawn; ``indices[:b]`` holds them in
  ascending order, ``indices[b:size]`` the lowest undrawn slots in ascending order (padding for
  the fixed-size second pass, given a zero gradient).

Instead of sorting all keys (two radix sorts in the torch path) the ``b``-th largest key is
found by a two-pass radix select on 32-bit order-preserving codes of the keys (a 65536-bin
histogram of the high 16 bits, then of the low 16 bits inside the chosen bin), and the output is
written by a stream compaction whose offsets come from per-block counts. Everything stays on the
device; ``b`` is a device tensor and only ``size`` is a host int.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

BLOCK = 1024
_BINS = 1 << 16
_SCAN = 1024  # bins per chunk of the bin search (64 chunks)


@triton.jit
def _keys_kernel(grad_ptr, n_ptr, seed_ptr, g_ptr, code_ptr, hist_ptr, part_ptr, C,
                 BLOCK: tl.constexpr):
    """G, the order-preserving key codes (0 for non-candidates), the high-half histogram of
    the codes and per-block partial sums (sum G, sum G^2, #candidates)."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inb = offs < C
    n = tl.load(n_ptr)
    base = grad_ptr + offs.to(tl.int64) * 4
    g0 = tl.load(base, mask=inb, other=0.0)
    g1 = tl.load(base + 1, mask=inb, other=0.0)
    g2 = tl.load(base + 2, mask=inb, other=0.0)
    g3 = tl.load(base + 3, mask=inb, other=0.0)
    # The norm scaled by its largest component: squares of gradients below ~1e-19 would
    # underflow (and a GPU flushes subnormals), turning G > 0 into 0.
    big = tl.maximum(tl.maximum(tl.abs(g0), tl.abs(g1)), tl.maximum(tl.abs(g2), tl.abs(g3)))
    inv = 1.0 / tl.where(big > 0.0, big, 1.0)
    s0, s1, s2, s3 = g0 * inv, g1 * inv, g2 * inv, g3 * inv
    g = big * tl.sqrt(s0 * s0 + s1 * s1 + s2 * s2 + s3 * s3)
    g = tl.where(inb & (offs < n), g, 0.0)
    tl.store(g_ptr + offs, g, mask=inb)
    cand = g > 0.0  # False for 0 and NaN
    seed = tl.load(seed_ptr)
    u = tl.rand(seed, offs)
    # E = -log U, kept inside the normal range so that every key is finite (the torch path
    # clamps E the same way from below); G below the normal range counts as the smallest
    # normal (a GPU may flush subnormals to zero, whose log would be -inf).
    e = tl.minimum(tl.maximum(-tl.log(u), 1.1754943508222875e-38), 3.0e38)
    key = tl.log(tl.where(cand, tl.maximum(g, 1.1754943508222875e-38), 1.0)) - tl.log(e)
    # Order-preserving 32-bit code of the float key (as an int32 bit pattern): negative
    # floats flip every bit, the others set the sign bit. 0 marks a non-candidate.
    bits = key.to(tl.int32, bitcast=True)
    code = tl.where(bits < 0, ~bits, bits | -2147483648)
    code = tl.where(cand, code, 0)
    tl.store(code_ptr + offs, code, mask=inb)
    high = (code.to(tl.uint32, bitcast=True) >> 16).to(tl.int32)
    tl.atomic_add(hist_ptr + high, 1, mask=cand)
    g64 = g.to(tl.float64)  # tau's sums in float64, as the torch path (G^2 may underflow)
    tl.store(part_ptr + pid * 3, tl.sum(g64, axis=0))
    tl.store(part_ptr + pid * 3 + 1, tl.sum(g64 * g64, axis=0))
    tl.store(part_ptr + pid * 3 + 2, tl.sum(cand.to(tl.float64), axis=0))


@triton.jit
def _chunk_sums_kernel(hist_ptr, sums_ptr, SCAN: tl.constexpr):
    """Program i: the count of histogram bins [i * SCAN, (i + 1) * SCAN)."""
    pid = tl.program_id(0)
    h = tl.load(hist_ptr + pid * SCAN + tl.arange(0, SCAN))
    tl.store(sums_ptr + pid, tl.sum(h, axis=0))


@triton.jit
def _find_bin_kernel(hist_ptr, sums_ptr, state_ptr, LEVEL: tl.constexpr, BINS: tl.constexpr,
                     SCAN: tl.constexpr):
    """One program. Finds the highest bin t whose count of codes in bins >= t reaches
    ``need`` and records t and the count strictly above it: first the chunk of SCAN bins
    (from the chunk sums), then the bin inside it.

    state (int64): [0] b (capped at the candidates by LEVEL 1), [1] t1, [2] count above t1,
    [3] need1 = b - [2], [4] t2, [5] count of codes > threshold, [6] ties to take at the
    threshold, [7] threshold code.
    LEVEL 1 reads ``need = b`` and writes [0..3]; LEVEL 2 reads ``need = need1`` and writes
    [4..7]. ``need = 0`` (b = 0) gives t = BINS - 1 and nothing above it.
    """
    NCHUNK: tl.constexpr = BINS // SCAN
    c = tl.arange(0, NCHUNK)
    sums = tl.load(sums_ptr + (NCHUNK - 1 - c)).to(tl.int64)  # highest chunk first
    if LEVEL == 1:
        need = tl.minimum(tl.load(state_ptr), tl.sum(sums, axis=0))  # b <= #candidates
        tl.store(state_ptr, need)
    else:
        need = tl.load(state_ptr + 3)
    cs = tl.cumsum(sums, axis=0)
    pc = tl.min(tl.where(cs >= need, c, NCHUNK - 1), axis=0)
    chunk = NCHUNK - 1 - pc
    above_chunk = tl.sum(tl.where(c == pc, cs - sums, 0), axis=0)
    r = tl.arange(0, SCAN)
    idx = chunk * SCAN + (SCAN - 1 - r)  # bins of the chunk, highest first
    h = tl.load(hist_ptr + idx).to(tl.int64)
    cs2 = tl.cumsum(h, axis=0) + above_chunk
    p = tl.min(tl.where(cs2 >= need, r, SCAN - 1), axis=0)
    found = tl.sum(tl.where(r == p, idx, 0), axis=0).to(tl.int64)
    above = tl.sum(tl.where(r == p, cs2 - h, 0), axis=0)
    found = tl.where(need > 0, found, BINS - 1)
    above = tl.where(need > 0, above, 0)
    if LEVEL == 1:
        tl.store(state_ptr + 1, found)
        tl.store(state_ptr + 2, above)
        tl.store(state_ptr + 3, need - above)
    else:
        t1 = tl.load(state_ptr + 1)
        tl.store(state_ptr + 4, found)
        tl.store(state_ptr + 5, tl.load(state_ptr + 2) + above)
        tl.store(state_ptr + 6, need - above)
        tl.store(state_ptr + 7, t1 * BINS + found)


@triton.jit
def _low_hist_kernel(code_ptr, state_ptr, hist_ptr, C, BLOCK: tl.constexpr):
    """Histogram of the low 16 bits of the codes whose high half is the chosen bin t1."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < C
    code = tl.load(code_ptr + offs, mask=inb, other=0).to(tl.uint32, bitcast=True)
    t1 = tl.load(state_ptr + 1).to(tl.uint32)
    hit = inb & (code != 0) & ((code >> 16) == t1)
    tl.atomic_add(hist_ptr + (code & 0xFFFF).to(tl.int32), 1, mask=hit)


@triton.jit
def _block_counts_kernel(code_ptr, state_ptr, count_ptr, C, BLOCK: tl.constexpr):
    """Per block: codes above the threshold and codes equal to it."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inb = offs < C
    code = tl.load(code_ptr + offs, mask=inb, other=0).to(tl.uint32, bitcast=True)
    thr = tl.load(state_ptr + 7).to(tl.uint32)
    gt = inb & (code > thr)
    tie = inb & (code == thr)
    tl.store(count_ptr + pid * 2, tl.sum(gt.to(tl.int32), axis=0))
    tl.store(count_ptr + pid * 2 + 1, tl.sum(tie.to(tl.int32), axis=0))


@triton.jit
def _block_offsets_kernel(count_ptr, state_ptr, base_ptr, NB, NBP: tl.constexpr):
    """One program: per block, the ties before it and the drawn slots before it."""
    r = tl.arange(0, NBP)
    m = r < NB
    gt = tl.load(count_ptr + r * 2, mask=m, other=0).to(tl.int64)
    tie = tl.load(count_ptr + r * 2 + 1, mask=m, other=0).to(tl.int64)
    need = tl.load(state_ptr + 6)
    tie_base = tl.cumsum(tie, axis=0) - tie
    take = tl.minimum(tl.maximum(need - tie_base, 0), tie)
    drawn = gt + take
    drawn_base = tl.cumsum(drawn, axis=0) - drawn
    tl.store(base_ptr + r * 2, tie_base, mask=m)
    tl.store(base_ptr + r * 2 + 1, drawn_base, mask=m)


@triton.jit
def _write_kernel(code_ptr, state_ptr, base_ptr, out_ptr, C, SIZE, BLOCK: tl.constexpr):
    """Drawn slots to out[drawn rank], the others to out[b + undrawn rank] while < SIZE."""
    pid = tl.program_id(0)
    r = tl.arange(0, BLOCK)
    offs = pid * BLOCK + r
    inb = offs < C
    code = tl.load(code_ptr + offs, mask=inb, other=0).to(tl.uint32, bitcast=True)
    thr = tl.load(state_ptr + 7).to(tl.uint32)
    need = tl.load(state_ptr + 6)
    b = tl.load(state_ptr)
    tie_base = tl.load(base_ptr + pid * 2)
    drawn_base = tl.load(base_ptr + pid * 2 + 1)
    tie = (inb & (code == thr)).to(tl.int64)
    tie_rank = tie_base + tl.cumsum(tie, axis=0) - tie
    drawn = inb & ((code > thr) | ((tie != 0) & (tie_rank < need)))
    d = drawn.to(tl.int64)
    before = drawn_base + tl.cumsum(d, axis=0) - d
    offs64 = offs.to(tl.int64)
    pos = tl.where(drawn, before, b + offs64 - before)
    tl.store(out_ptr + pos, offs64, mask=inb & (pos < SIZE))


def key_to_code(keys: Tensor) -> Tensor:
    """Order-preserving 32-bit codes (int32 bit patterns) of float32 keys, as the first kernel
    writes them; 0 for keys that are not > -inf (non-candidates). For tests."""
    bits = keys.to(torch.float32).contiguous().view(torch.int32).to(torch.int64)
    code = torch.where(bits < 0, ~bits, bits | 0x80000000)
    code = torch.where(keys > float("-inf"), code, torch.zeros_like(code))
    return torch.where(code >= 1 << 31, code - (1 << 32), code).to(torch.int32)


def code_to_key(code: Tensor) -> Tensor:
    """The float32 key of 32-bit codes as stored (int32 bit patterns); -inf for code 0
    (non-candidates). For tests: the codes are a monotone image of the keys."""
    c = code.to(torch.int64) & 0xFFFFFFFF
    bits = torch.where(c >= 0x80000000, c ^ 0x80000000, c ^ 0xFFFFFFFF)
    bits = torch.where(bits >= 0x80000000, bits - (1 << 32), bits).to(torch.int32)
    key = bits.view(torch.float32)
    return torch.where(c == 0, torch.full_like(key, float("-inf")), key)


class MineWorkspace:
    """Buffers of one selection, reused across calls of the same capacity (a CUDA graph
    replays the same addresses)."""

    def __init__(self, capacity: int, device: torch.device):
        self.capacity = capacity
        self.n_blocks = triton.cdiv(capacity, BLOCK)
        self.importance = torch.empty(capacity, dtype=torch.float32, device=device)
        self.codes = torch.empty(capacity, dtype=torch.int32, device=device)
        self.hist = torch.empty(2, _BINS, dtype=torch.int32, device=device)
        self.chunks = torch.empty(2, _BINS // _SCAN, dtype=torch.int32, device=device)
        self.partial = torch.empty(self.n_blocks, 3, dtype=torch.float64, device=device)
        self.counts = torch.empty(self.n_blocks, 2, dtype=torch.int32, device=device)
        self.bases = torch.empty(self.n_blocks, 2, dtype=torch.int64, device=device)
        self.state = torch.empty(8, dtype=torch.int64, device=device)


def importance_and_keys(grad_raw: Tensor, n_samples: Tensor, seed: Tensor,
                        ws: MineWorkspace) -> tuple[Tensor, Tensor]:
    """First kernel: fills ``ws.importance``, ``ws.codes``, the high histogram and the
    partial sums; returns (importance [C] float32, partial sums [n_blocks, 3] float64).
    ``grad_raw`` must be [C, 4]: the kernel reads four values per row (narrower outputs are
    padded by :func:`nerfmine.ops.mining.race`)."""
    if grad_raw.dim() != 2 or grad_raw.shape[1] != 4:
        raise ValueError(f"grad_raw must be [C, 4], got {list(grad_raw.shape)}")
    c = grad_raw.shape[0]
    if c != ws.capacity:
        raise ValueError(f"workspace is for {ws.capacity} slots, grad_raw has {c}")
    grad = grad_raw.detach().to(torch.float32).contiguous()
    ws.hist.zero_()
    _keys_kernel[(ws.n_blocks,)](grad, n_samples.reshape(1), seed.reshape(1), ws.importance,
                                 ws.codes, ws.hist[0], ws.partial, c, BLOCK=BLOCK, num_warps=4)
    return ws.importance, ws.partial


def select_drawn(b: Tensor, size: int, ws: MineWorkspace) -> Tensor:
    """After :func:`importance_and_keys`: the ``size`` output slots (int64), the drawn ones
    (``min(b, size, #candidates)`` of them) first. ``b`` is a device tensor."""
    c = ws.capacity
    if not 0 <= size <= c:
        raise ValueError(f"size must lie in [0, {c}], got {size}")
    out = torch.empty(size, dtype=torch.int64, device=ws.codes.device)
    if size == 0:
        return out
    ws.state[0:1].copy_(b.reshape(1).clamp(max=size))  # the top `size` when b > size
    n_chunks = _BINS // _SCAN
    _chunk_sums_kernel[(n_chunks,)](ws.hist[0], ws.chunks[0], SCAN=_SCAN, num_warps=4)
    _find_bin_kernel[(1,)](ws.hist[0], ws.chunks[0], ws.state, LEVEL=1, BINS=_BINS, SCAN=_SCAN,
                           num_warps=4)
    _low_hist_kernel[(ws.n_blocks,)](ws.codes, ws.state, ws.hist[1], c, BLOCK=BLOCK,
                                     num_warps=4)
    _chunk_sums_kernel[(n_chunks,)](ws.hist[1], ws.chunks[1], SCAN=_SCAN, num_warps=4)
    _find_bin_kernel[(1,)](ws.hist[1], ws.chunks[1], ws.state, LEVEL=2, BINS=_BINS, SCAN=_SCAN,
                           num_warps=4)
    _block_counts_kernel[(ws.n_blocks,)](ws.codes, ws.state, ws.counts, c, BLOCK=BLOCK,
                                         num_warps=4)
    nbp = triton.next_power_of_2(max(ws.n_blocks, 16))
    _block_offsets_kernel[(1,)](ws.counts, ws.state, ws.bases, ws.n_blocks, NBP=nbp,
                                num_warps=4)
    _write_kernel[(ws.n_blocks,)](ws.codes, ws.state, ws.bases, out, c, size, BLOCK=BLOCK,
                                  num_warps=4)
    return out
