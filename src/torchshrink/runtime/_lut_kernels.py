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

* Batch 1 (:func:`lut_matvec`): groups go ``SUM_GROUP`` at a time; their tables (8 x 243
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
from numba import njit, prange

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
        xp = np.zeros((n_groups * width, bb), np.float32)
        xn = np.zeros((n_groups * width, bb), np.float32)
        for j in prange(n):
            if kind == TERNARY:
                for b in range(bb):
                    xp[j, b] = scales[0] * x[b0 + b, j]
                    xn[j, b] = scales[1] * x[b0 + b, j]
            else:
                for b in range(bb):
                    xp[j, b] = x[b0 + b, j]
        partial = np.zeros((nthreads, n_out, bb), np.float32)
        tables = np.empty((nthreads, SUM_GROUP, entries, bb), np.float32)
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
