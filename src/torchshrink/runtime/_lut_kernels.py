"""numba kernels for ternary and binary weights: sums of activations by table lookup.

A ternary weight row has three levels {+Wp, 0, -Wn} (TTQ) and a binary one two, {+α, -α}
(BinaryConnect, BWN, LAB), so ``y[o] = Σ_j w_oj x_j`` needs no multiplication per
weight: it is ``Wp · Σ_{j ∈ P_o} x_j - Wn · Σ_{j ∈ N_o} x_j`` (ternary) or
``α_o · (Σ_{P_o} x_j - Σ_{N_o} x_j)`` (binary). The kernels go further and share the
sums between rows: the inputs are cut into groups of ``width`` (5 for ternary, 8 for
binary); for each group every possible pattern of signs has its partial sum in a table
built with additions only (243 = 3^5 entries from ``+Wp·x``, ``-Wn·x`` and 0; 256 = 2^8
entries of ``±x``), and a weight row stores one uint8 pattern code per group. Then

    y[o] = Σ_g T[g, code[g, o]]            (ternary: Wp, Wn are already in T)
    y[o] = α_o · Σ_g T[g, code[g, o]]      (binary: one multiplication per output)

``width`` additions per code become one. Building a table costs ``entries`` additions
(~49 per input for ternary, 32 for binary), small against the ``out / width`` lookups
per input. Ternary scales ``x`` by Wp and Wn once per input (two multiplications per
input, none per weight). Codes are stored group-major, ``codes_t[g, o]``, so for one
group the codes of consecutive rows are contiguous.

* Batch 1 on AVX-512 (:func:`perm_matvec`, below): groups of 4 inputs whose 16-entry
  tables sit in registers and VPERMPS looks up 16 rows at once (no gathers).
* Batch 1 elsewhere (:func:`lut_matvec`): groups go ``SUM_GROUP`` at a time; their tables (8 x 243
  or 8 x 256 floats, at most 8 KB) stay in L1 while a loop over the rows, vectorized
  across rows (gathers), adds the ``SUM_GROUP`` entries to the row's output. Threads
  split the groups and sum private partial outputs.
* Batches (:func:`lut_matmul`): the tables gain a batch axis, ``T[g, c, b]``, so the
  sum over groups is contiguous vector adds over the batch (no gathers), 64 batch rows
  per pass.

As in the PQ kernels, the parallel loop bodies create no array views (numba then marks
the arrays ``noalias``) and full blocks use constant trip counts.
"""

from __future__ import annotations

import numpy as np
from llvmlite import binding as llvm
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from ._aligned import empty64, zeros64

TERNARY, BINARY = 0, 1
#: Inputs per code and table entries per group, by kind.
TRIT_WIDTH, TRIT_ENTRIES = 5, 243
BIT_WIDTH, BIT_ENTRIES = 8, 256
#: Groups whose table entries are summed per visit of an output row.
SUM_GROUP = 8
#: Batch rows per pass of the batched kernel.
BATCH_BLOCK = 64


def width_of(kind: int) -> int:
    return TRIT_WIDTH if kind == TERNARY else BIT_WIDTH


@njit(inline="always", fastmath=True)
def _build(tables, t, i, xp, xn, j0, kind):
    """Fill ``tables[t, i, :]`` with the partial sums of the group of inputs starting at ``j0``.

    Ternary (code ``c = Σ_k c_k 3^k``, ``c_k``: 0 zero, 1 positive, 2 negative):
    ``T[c] = Σ_k v_k(c_k)`` with ``v(1) = xp = Wp·x``, ``v(2) = -xn = -Wn·x``.
    Binary (bit ``k`` of ``c`` set = positive): ``T[c] = Σ_k ±x_k``. Additions only.
    """
    if kind == TERNARY:
        tables[t, i, 0] = 0.0
        tables[t, i, 1] = xp[j0]
        tables[t, i, 2] = -xn[j0]
        m = 3
        for k in range(1, TRIT_WIDTH):
            p = xp[j0 + k]
            q = xn[j0 + k]
            for c in range(m):
                base = tables[t, i, c]
                tables[t, i, c + m] = base + p
                tables[t, i, c + 2 * m] = base - q
            m *= 3
    else:
        total = np.float32(0.0)
        for k in range(BIT_WIDTH):
            total += xp[j0 + k]
        tables[t, i, 0] = -total
        m = 1
        for k in range(BIT_WIDTH):
            two = xp[j0 + k] + xp[j0 + k]
            for c in range(m):
                tables[t, i, c + m] = tables[t, i, c] + two
            m *= 2


@njit(inline="always", fastmath=True)
def _build_batch(tables, t, i, xp, xn, j0, bb, kind):
    """:func:`_build` with a batch axis: ``tables[t, i, c, b]`` from ``xp[j, b]`` / ``xn[j, b]``."""
    if kind == TERNARY:
        for b in range(bb):
            tables[t, i, 0, b] = 0.0
            tables[t, i, 1, b] = xp[j0, b]
            tables[t, i, 2, b] = -xn[j0, b]
        m = 3
        for k in range(1, TRIT_WIDTH):
            for c in range(m):
                for b in range(bb):
                    base = tables[t, i, c, b]
                    tables[t, i, c + m, b] = base + xp[j0 + k, b]
                    tables[t, i, c + 2 * m, b] = base - xn[j0 + k, b]
            m *= 3
    else:
        for b in range(bb):
            total = np.float32(0.0)
            for k in range(BIT_WIDTH):
                total += xp[j0 + k, b]
            tables[t, i, 0, b] = -total
        m = 1
        for k in range(BIT_WIDTH):
            for c in range(m):
                for b in range(bb):
                    tables[t, i, c + m, b] = tables[t, i, c, b] + (xp[j0 + k, b] + xp[j0 + k, b])
            m *= 2


@njit(cache=True, fastmath=True, parallel=True)
def lut_matvec(x, codes_t, scales, kind, y, threads):
    """``y = W x`` for one vector. ``codes_t`` (G, out) uint8; ``scales``: [Wp, Wn] (ternary) or α ((out,) or (1,))."""
    n_groups, n_out = codes_t.shape
    width = TRIT_WIDTH if kind == TERNARY else BIT_WIDTH
    entries = TRIT_ENTRIES if kind == TERNARY else BIT_ENTRIES
    n = x.size
    xp = np.zeros(n_groups * width, np.float32)
    xn = np.zeros(n_groups * width, np.float32)
    if kind == TERNARY:
        for j in range(n):
            xp[j] = scales[0] * x[j]
            xn[j] = scales[1] * x[j]
    else:
        for j in range(n):
            xp[j] = x[j]
    n_blocks = (n_groups + SUM_GROUP - 1) // SUM_GROUP
    nthreads = min(threads, n_blocks)
    partial = np.zeros((nthreads, n_out), np.float32)
    tables = np.empty((nthreads, SUM_GROUP, entries), np.float32)
    for t in prange(nthreads):
        for blk in range(n_blocks * t // nthreads, n_blocks * (t + 1) // nthreads):
            g0 = blk * SUM_GROUP
            m = min(SUM_GROUP, n_groups - g0)
            for i in range(m):
                _build(tables, t, i, xp, xn, (g0 + i) * width, kind)
            if m == SUM_GROUP:
                for o in range(n_out):
                    partial[t, o] += (
                        (tables[t, 0, codes_t[g0, o]] + tables[t, 1, codes_t[g0 + 1, o]])
                        + (tables[t, 2, codes_t[g0 + 2, o]] + tables[t, 3, codes_t[g0 + 3, o]])
                    ) + (
                        (tables[t, 4, codes_t[g0 + 4, o]] + tables[t, 5, codes_t[g0 + 5, o]])
                        + (tables[t, 6, codes_t[g0 + 6, o]] + tables[t, 7, codes_t[g0 + 7, o]])
                    )
            else:
                for o in range(n_out):
                    acc = np.float32(0.0)
                    for i in range(m):
                        acc += tables[t, i, codes_t[g0 + i, o]]
                    partial[t, o] += acc
    stride = 1 if scales.size > 1 else 0
    for o in prange(n_out):
        acc = np.float32(0.0)
        for t in range(nthreads):
            acc += partial[t, o]
        if kind == TERNARY:
            y[o] = acc
        else:
            y[o] = acc * scales[o * stride]


@njit(cache=True, fastmath=True, parallel=True)
def lut_matmul(x, codes_t, scales, kind, y, threads):
    """``Y = X W^T`` for a batch ``x`` (batch x in); arguments as :func:`lut_matvec`."""
    batch, n = x.shape
    n_groups, n_out = codes_t.shape
    width = TRIT_WIDTH if kind == TERNARY else BIT_WIDTH
    entries = TRIT_ENTRIES if kind == TERNARY else BIT_ENTRIES
    n_blocks = (n_groups + SUM_GROUP - 1) // SUM_GROUP
    nthreads = min(threads, n_blocks)
    stride = 1 if scales.size > 1 else 0
    for b0 in range(0, batch, BATCH_BLOCK):
        bb = min(BATCH_BLOCK, batch - b0)
        full = bb == BATCH_BLOCK
        xp = zeros64((n_groups * width, bb))  # 64-byte aligned rows: see _aligned
        xn = zeros64((n_groups * width, bb))
        for j in prange(n):
            if kind == TERNARY:
                for b in range(bb):
                    xp[j, b] = scales[0] * x[b0 + b, j]
                    xn[j, b] = scales[1] * x[b0 + b, j]
            else:
                for b in range(bb):
                    xp[j, b] = x[b0 + b, j]
        partial = zeros64((nthreads, n_out, bb))
        tables = empty64((nthreads, SUM_GROUP, entries, bb))
        for t in prange(nthreads):
            for blk in range(n_blocks * t // nthreads, n_blocks * (t + 1) // nthreads):
                g0 = blk * SUM_GROUP
                m = min(SUM_GROUP, n_groups - g0)
                for i in range(m):
                    _build_batch(tables, t, i, xp, xn, (g0 + i) * width, bb, kind)
                if m == SUM_GROUP:
                    for o in range(n_out):
                        c0 = codes_t[g0, o]
                        c1 = codes_t[g0 + 1, o]
                        c2 = codes_t[g0 + 2, o]
                        c3 = codes_t[g0 + 3, o]
                        c4 = codes_t[g0 + 4, o]
                        c5 = codes_t[g0 + 5, o]
                        c6 = codes_t[g0 + 6, o]
                        c7 = codes_t[g0 + 7, o]
                        if full:
                            for b in range(BATCH_BLOCK):
                                partial[t, o, b] += (
                                    (tables[t, 0, c0, b] + tables[t, 1, c1, b])
                                    + (tables[t, 2, c2, b] + tables[t, 3, c3, b])
                                ) + (
                                    (tables[t, 4, c4, b] + tables[t, 5, c5, b])
                                    + (tables[t, 6, c6, b] + tables[t, 7, c7, b])
                                )
                        else:
                            for b in range(bb):
                                partial[t, o, b] += (
                                    (tables[t, 0, c0, b] + tables[t, 1, c1, b])
                                    + (tables[t, 2, c2, b] + tables[t, 3, c3, b])
                                ) + (
                                    (tables[t, 4, c4, b] + tables[t, 5, c5, b])
                                    + (tables[t, 6, c6, b] + tables[t, 7, c7, b])
                                )
                else:
                    for o in range(n_out):
                        for i in range(m):
                            c = codes_t[g0 + i, o]
                            for b in range(bb):
                                partial[t, o, b] += tables[t, i, c, b]
        for b in prange(bb):
            for o in range(n_out):
                acc = np.float32(0.0)
                for t in range(nthreads):
                    acc += partial[t, o, b]
                if kind == TERNARY:
                    y[b0 + b, o] = acc
                else:
                    y[b0 + b, o] = acc * scales[o * stride]


# ---------------------------------------------------------------- batch 1 on AVX-512: 16-entry tables in registers
#
# The gathers above cost one load per (group, row): 2M loads for a 4096 x 4096 binary
# matrix, which bounds lut_matvec at about one table entry per cycle. With groups of 4
# inputs a group's table has 16 float32 entries, one AVX-512 register, and VPERMPS looks
# up 16 rows' entries at once from 16 4-bit codes: 64 weights per instruction, no gather.
# A weight is stored as bit planes, ``words[p, k, o]`` (int32) holding 32 bits of row
# ``o`` for inputs ``32k .. 32k+31`` (LSB first; plane 0 "positive", plane 1 "negative" for
# ternary), so nibble ``q`` of a word is the 4-bit code of group ``8k + q``, and for one
# ``k`` the words of 16 consecutive rows are one vector load. ``T[g, c] = Σ_{bit i of c}
# x[4g + i]`` (additions only); per plane ``S_o = Σ_g T[g, code]``, then binary
# ``y = α (2 S - Σx)`` and ternary ``y = Wp S_pos - Wn S_neg``.
PERM_ROWS = 16
#: 32-bit words per step (4: 128 inputs, 32 tables per pass over 16 rows).
PERM_WORDS = 4
_F16 = ir.VectorType(ir.FloatType(), 16)
_I16 = ir.VectorType(ir.IntType(32), 16)


def _has_avx512() -> bool:
    """True where LLVM reports AVX-512F for this CPU (VPERMPS on 512-bit registers)."""
    try:
        return bool(llvm.get_host_cpu_features().get("avx512f", False))
    except Exception:  # noqa: BLE001 - no feature list: take the portable path
        return False


#: Whether :func:`perm_matvec` may run here; the kernels fall back to :func:`lut_matvec` elsewhere.
HAS_PERMVAR = _has_avx512()


def _vec_ptr(context, builder, aryty, ary, idx, vty):  # noqa: ANN001, ANN202 - numba codegen helper
    a = context.make_array(aryty)(context, builder, ary)
    return builder.bitcast(builder.gep(a.data, [idx]), vty.as_pointer())


@intrinsic
def _perm_step(typingctx, tables, t0, words, w0, wstride, acc, a0):  # noqa: ANN001, ANN202
    """``acc[a0 : a0+16] += Σ_{w < PERM_WORDS} Σ_{q < 8} vpermps(tables[t0 + 16 (8w + q)], words[w0 + w·wstride] >> 4q)``."""
    sig = types.void(tables, t0, words, w0, wstride, acc, a0)

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        tab, tq, wd, wp, ws, ac, ap = args
        ta, _, wa, _, _, aa, _ = signature.args
        perm = builder.module.declare_intrinsic("llvm.x86.avx512.permvar.sf.512",
                                                fnty=ir.FunctionType(_F16, [_F16, _I16]))
        total = None
        for w in range(PERM_WORDS):
            code = builder.load(_vec_ptr(context, builder, wa, wd, builder.add(wp, builder.mul(ws, ir.Constant(ws.type, w))),
                                         _I16), align=4)
            for q in range(8):
                off = builder.add(tq, ir.Constant(tq.type, PERM_ROWS * (8 * w + q)))
                table = builder.load(_vec_ptr(context, builder, ta, tab, off, _F16), align=4)
                idx = code if q == 0 else builder.lshr(code, ir.Constant(_I16, [4 * q] * 16))
                r = builder.call(perm, [table, idx])
                total = r if total is None else builder.fadd(total, r)
        ptr = _vec_ptr(context, builder, aa, ac, ap, _F16)
        builder.store(builder.fadd(builder.load(ptr, align=4), total), ptr, align=4)

    return sig, codegen


@njit(cache=True, fastmath=True, parallel=True)
def perm_matvec(x, words, scales, kind, y, threads):
    """``y = W x`` for one vector from bit planes ``words`` (planes, K, out_pad) int32 (AVX-512 only).

    ``K`` is a multiple of :data:`PERM_WORDS` and ``out_pad`` of :data:`PERM_ROWS`; ``scales``
    as :func:`lut_matvec`. Threads split the inputs and sum private partial outputs.
    """
    planes, nk, out_pad = words.shape
    n_out = y.size
    n = x.size
    groups = nk * 8
    tables = zeros64((groups * 16,))  # one zmm per table, on a cache line
    xs = np.zeros(nk * 32, np.float32)
    total = np.float32(0.0)
    for j in range(n):
        xs[j] = x[j]
        total += x[j]
    for g in prange(groups):
        x0, x1, x2, x3 = xs[4 * g], xs[4 * g + 1], xs[4 * g + 2], xs[4 * g + 3]
        b = g * 16
        tables[b] = 0.0
        tables[b + 1] = x0
        for c in range(2, 4):
            tables[b + c] = tables[b + c - 2] + x1
        for c in range(4, 8):
            tables[b + c] = tables[b + c - 4] + x2
        for c in range(8, 16):
            tables[b + c] = tables[b + c - 8] + x3
    steps = nk // PERM_WORDS
    nthreads = min(threads, steps)
    acc = zeros64((nthreads * planes * out_pad,))
    flat = words.reshape(-1)
    n_blocks = out_pad // PERM_ROWS
    for t in prange(nthreads):
        for s in range(steps * t // nthreads, steps * (t + 1) // nthreads):
            k = s * PERM_WORDS
            for p in range(planes):
                base = (p * nk + k) * out_pad
                a = (t * planes + p) * out_pad
                for ob in range(n_blocks):
                    _perm_step(tables, k * 8 * 16, flat, base + ob * PERM_ROWS, out_pad, acc, a + ob * PERM_ROWS)
    stride = 1 if scales.size > 1 else 0
    for o in prange(n_out):
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        for t in range(nthreads):
            s0 += acc[(t * planes) * out_pad + o]
            if planes > 1:
                s1 += acc[(t * planes + 1) * out_pad + o]
        if kind == TERNARY:
            y[o] = scales[0] * s0 - scales[1] * s1
        else:
            y[o] = scales[o * stride] * (s0 + s0 - total)


def bit_planes(*masks: np.ndarray) -> np.ndarray:
    """The ``words`` layout of :func:`perm_matvec` from ``out x in`` 0/1 masks (one per plane)."""
    out, n = masks[0].shape
    nk = -(-n // (32 * PERM_WORDS)) * PERM_WORDS
    out_pad = -(-out // PERM_ROWS) * PERM_ROWS
    words = np.zeros((len(masks), nk, out_pad), np.int32)
    for p, m in enumerate(masks):
        padded = np.zeros((out_pad, nk * 32), np.uint8)
        padded[:out, :n] = m
        words[p] = np.packbits(padded, axis=1, bitorder="little").view("<i4").T
    return words
