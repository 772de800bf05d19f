"""numba kernels for bitwise layers (Kim & Smaragdis 2016; XNOR-Net's binary convolution).

With ±1 values stored as bits (1 = +1, 0 = −1) a dot product of ``n`` entries is
``x·w = n − 2·popcount(x XOR w)`` (the paper's ``2·popcount(xnor(x, w)) − n``, counted
from the disagreements instead of the agreements). Rows are padded to whole 64-bit words
with zero bits on both sides, which agree and so add nothing to the count.

Layout (OpenVINO's binary convolution, ``../shared/DESIGN.md``): weights are cut into
blocks of :data:`LANES` output rows whose words are interleaved, ``wt[block, word, lane]``,
so one input word is broadcast against a vector of 16 output rows' words: XOR, VPOPCNTQ
and an add per 8 lanes, no horizontal sum. Accumulators are unrolled over 4 input rows
(batch rows, or output pixels of a convolution) × 16 lanes.

Popcount paths (:data:`PATHS`): ``"ctpop"`` calls LLVM's ``llvm.ctpop.i64``, which LLVM
lowers to VPOPCNTQ where the CPU has AVX-512 VPOPCNTDQ (checked in the assembly by the
tests), to a PSHUFB nibble lookup on AVX2 and to POPCNT otherwise; ``"lookup"`` is a
portable byte-table popcount, the fallback for CPUs without any of these, which the
tests compare with the fast path. Every kernel takes ``lookup`` (a bool) and holds both
paths, chosen once per weight block, so one compiled and cached function serves both;
the fallback's inner loops are the plain ones (one input row at a time), as are those of
masked weights (the sparsity threshold) and of a batch's last rows. The unrolled loops
are small ``inline="always"`` functions holding nothing else: branches in them stop LLVM
from keeping the accumulators in registers (measured 3-6x slower).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

#: Output rows per interleaved weight block (two AVX-512 vectors of 64-bit words).
LANES = 16
#: Input rows (batch rows or output pixels) sharing one pass over a weight block.
ROWS = 4
PATHS = ("ctpop", "lookup")

_BYTE_COUNTS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint64)


@intrinsic
def _ctpop(typingctx, x):  # noqa: ANN001 - numba intrinsic signature
    """``llvm.ctpop.i64``: the CPU's popcount instruction (VPOPCNTQ once vectorized)."""
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):  # noqa: ANN001
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return sig, codegen


@njit(inline="always")
def _lookup(v):
    """Popcount of a 64-bit word by 8 byte-table lookups (no popcount instruction needed)."""
    t = _BYTE_COUNTS
    return (t[v & 0xFF] + t[(v >> 8) & 0xFF] + t[(v >> 16) & 0xFF] + t[(v >> 24) & 0xFF]
            + t[(v >> 32) & 0xFF] + t[(v >> 40) & 0xFF] + t[(v >> 48) & 0xFF] + t[v >> 56])


@njit(inline="always")
def _acc4(x, b0, wt, nb, kw, acc):
    """``acc[r, lane] +=`` disagreements of input rows ``b0 .. b0+3`` with block ``nb`` (VPOPCNTQ path)."""
    for k in range(kw):
        x0, x1, x2, x3 = x[b0, k], x[b0 + 1, k], x[b0 + 2, k], x[b0 + 3, k]
        for j in range(LANES):
            w = wt[nb, k, j]
            acc[0, j] += _ctpop(x0 ^ w)
            acc[1, j] += _ctpop(x1 ^ w)
            acc[2, j] += _ctpop(x2 ^ w)
            acc[3, j] += _ctpop(x3 ^ w)


@njit(fastmath=True, cache=True)
def _acc_rows(x, b0, nr, wt, nb, kw, acc, masked, mt, lookup):
    """:func:`_acc4` one row at a time, for a batch tail, masked weights or the lookup path."""
    for r in range(nr):
        for k in range(kw):
            xv = x[b0 + r, k]
            if lookup:
                for j in range(LANES):
                    d = xv ^ wt[nb, k, j]
                    acc[r, j] += _lookup(d & mt[nb, k, j] if masked else d)
            elif masked:
                for j in range(LANES):
                    acc[r, j] += _ctpop((xv ^ wt[nb, k, j]) & mt[nb, k, j])
            else:
                for j in range(LANES):
                    acc[r, j] += _ctpop(xv ^ wt[nb, k, j])


@njit(inline="always")
def _run_block(lookup, x, b0, nr, wt, nb, kw, acc, masked, mt):
    """``acc[r, lane]`` = disagreements of input row ``b0 + r`` with the rows of block ``nb``."""
    acc[:, :] = 0
    if nr == ROWS and not masked and not lookup:
        _acc4(x, b0, wt, nb, kw, acc)
    else:
        _acc_rows(x, b0, nr, wt, nb, kw, acc, masked, mt, lookup)


@njit(fastmath=True, parallel=True, cache=True)
def gemm(x, wt, n_active, masked, mt, n_out, out, lookup, threads):
    """``out[b, o] = x_b·w_o`` (int32) for packed inputs ``x`` (B, kw) and blocks ``wt``."""
    batch, kw = x.shape
    for nb in prange(wt.shape[0]):
        acc = np.zeros((ROWS, LANES), np.uint64)
        for b0 in range(0, batch, ROWS):
            nr = min(ROWS, batch - b0)
            _run_block(lookup, x, b0, nr, wt, nb, kw, acc, masked, mt)
            for j in range(LANES):
                o = nb * LANES + j
                if o < n_out:
                    for r in range(nr):
                        out[b0 + r, o] = np.int32(n_active[o]) - 2 * np.int32(acc[r, j])

@njit(fastmath=True, parallel=True, cache=True)
def gemm_sign(x, wt, n_active, masked, mt, threshold, flip, n_out, out, lookup, threads):
    """Packed ``sign`` outputs: bit ``o`` of row ``b`` = ``(x_b·w_o >= threshold[o]) XOR flip[o]``.

    ``out`` is (B, ceil(n_out / 64)) uint64; one task fills one output word (4 blocks).
    """
    batch, kw = x.shape
    n_blocks = wt.shape[0]
    per_word = 64 // LANES
    for ow in prange(out.shape[1]):
        acc = np.zeros((ROWS, LANES), np.uint64)
        words = np.zeros(ROWS, np.uint64)
        for b0 in range(0, batch, ROWS):
            nr = min(ROWS, batch - b0)
            words[:] = 0
            for sub in range(per_word):
                nb = ow * per_word + sub
                if nb >= n_blocks:
                    break
                _run_block(lookup, x, b0, nr, wt, nb, kw, acc, masked, mt)
                for j in range(LANES):
                    o = nb * LANES + j
                    if o < n_out:
                        for r in range(nr):
                            z = np.int32(n_active[o]) - 2 * np.int32(acc[r, j])
                            if (z >= threshold[o]) != (flip[o] != 0):
                                words[r] |= np.uint64(1) << np.uint64(o - ow * 64)
            for r in range(nr):
                out[b0 + r, ow] = words[r]

@njit(inline="always")
def _conv4(xp, wt, b, y, x0, nb, kh, kw_, stride, acc):
    """``acc[r, lane] +=`` disagreements of the windows at output pixels (y, x0 .. x0+3) with block ``nb``."""
    cw = xp.shape[3]
    for i in range(kh):
        for jj in range(kw_):
            for c in range(cw):
                k = (i * kw_ + jj) * cw + c
                a0 = xp[b, y * stride + i, x0 * stride + jj, c]
                a1 = xp[b, y * stride + i, (x0 + 1) * stride + jj, c]
                a2 = xp[b, y * stride + i, (x0 + 2) * stride + jj, c]
                a3 = xp[b, y * stride + i, (x0 + 3) * stride + jj, c]
                for j in range(LANES):
                    w = wt[nb, k, j]
                    acc[0, j] += _ctpop(a0 ^ w)
                    acc[1, j] += _ctpop(a1 ^ w)
                    acc[2, j] += _ctpop(a2 ^ w)
                    acc[3, j] += _ctpop(a3 ^ w)


@njit(fastmath=True, cache=True)
def _conv_rows(xp, wt, b, y, x0, nr, nb, kh, kw_, stride, acc, lookup):
    """:func:`_conv4` one pixel at a time (a row's tail, or the lookup path)."""
    cw = xp.shape[3]
    for i in range(kh):
        for jj in range(kw_):
            for c in range(cw):
                k = (i * kw_ + jj) * cw + c
                for r in range(nr):
                    a = xp[b, y * stride + i, (x0 + r) * stride + jj, c]
                    if lookup:
                        for j in range(LANES):
                            acc[r, j] += _lookup(a ^ wt[nb, k, j])
                    else:
                        for j in range(LANES):
                            acc[r, j] += _ctpop(a ^ wt[nb, k, j])


@njit(fastmath=True, parallel=True, cache=True)
def conv(xp, wt, kh, kw_, stride, n_bits, n_out, oh, ow, out, lookup, threads):
    """Binary convolution: ``out[b, y, x, o]`` (int32, NHWC) = the ±1 dot of a window and filter ``o``.

    ``xp`` is the input padded with +1 bits, (B, H + 2p, W + 2p, cw) words packed along
    channels (channel tail bits 0); filters are packed as (kh, kw, cw) words in ``wt``'s
    blocks; ``n_bits`` = kh·kw·channels. Output pixels are taken 4 at a time along a row,
    every window a row of the "im2col" matrix that is never built.
    """
    batch = xp.shape[0]
    tiles = (ow + ROWS - 1) // ROWS
    for task in prange(wt.shape[0] * batch * oh):
        nb = task // (batch * oh)
        rem = task % (batch * oh)
        b = rem // oh
        y = rem % oh
        acc = np.zeros((ROWS, LANES), np.uint64)
        for t in range(tiles):
            x0 = t * ROWS
            nr = min(ROWS, ow - x0)
            acc[:, :] = 0
            if nr == ROWS and not lookup:
                _conv4(xp, wt, b, y, x0, nb, kh, kw_, stride, acc)
            else:
                _conv_rows(xp, wt, b, y, x0, nr, nb, kh, kw_, stride, acc, lookup)
            for j in range(LANES):
                o = nb * LANES + j
                if o < n_out:
                    for r in range(nr):
                        out[b, y, x0 + r, o] = np.int32(n_bits) - 2 * np.int32(acc[r, j])


