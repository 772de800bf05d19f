"""numba kernels for product-quantized linear layers (Q-CNN, Wu et al. 2016); see ``pq.py``.

Notation: ``S`` sub-spaces of length ``d``, ``K <= 256`` codewords each, ``out`` rows.
Inference (Q-CNN §3.1, Eq. 4) builds, per sub-space, the lookup table
``T[s, k] = x_s . c_{s,k}`` and sums table entries by code:
``y[o] = sum_s T[s, code[o, s]]``. Codes are stored sub-space-major, ``codes_t[s, o]``,
so that for a fixed sub-space the codes of consecutive rows are contiguous.

* Batch 1 (:func:`pq_matvec`): sub-spaces go ``SUM_GROUP`` at a time; the group's
  tables (``SUM_GROUP * K`` floats, 8 KB at K = 256) stay in L1 while a loop over the
  rows, vectorized across rows, gathers one entry per sub-space and adds the group's sum
  to the row's output. Threads split the groups and sum private partial outputs.
* Batches (:func:`pq_matmul`): the table gains a batch axis, ``T[s, k, b]``, so the
  sum over codes becomes contiguous vector adds (no gathers); threads again split the
  sub-space groups, each with its own partial output.

The parallel loop bodies create no array views, so numba's parfor lowering marks the
arrays ``noalias`` and LLVM vectorizes the gathers/adds without runtime overlap checks.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._aligned import empty64, zeros64

#: Sub-spaces whose table entries are summed per visit of an output row.
SUM_GROUP = 8
#: Batch rows per pass of the batched kernel.
BATCH_BLOCK = 64


@njit(cache=True, fastmath=True, parallel=True)
def pq_matvec(x, codebooks_t, codes_t, y, threads):
    """``y = W_hat x`` for one vector. ``codebooks_t`` is (S, d, K), ``codes_t`` (S, out) uint8."""
    n_sub, d, k = codebooks_t.shape
    n_out = codes_t.shape[1]
    xp = np.zeros(n_sub * d, np.float32)
    xp[: x.size] = x
    n_groups = (n_sub + SUM_GROUP - 1) // SUM_GROUP
    nthreads = min(threads, n_groups)
    partial = np.zeros((nthreads, n_out), np.float32)
    tables = np.empty((nthreads, SUM_GROUP, k), np.float32)
    for t in prange(nthreads):
        for g in range(n_groups * t // nthreads, n_groups * (t + 1) // nthreads):
            s0 = g * SUM_GROUP
            m = min(SUM_GROUP, n_sub - s0)
            for i in range(m):
                s = s0 + i
                x0 = xp[s * d]
                for c in range(k):
                    tables[t, i, c] = x0 * codebooks_t[s, 0, c]
                for j in range(1, d):
                    xj = xp[s * d + j]
                    for c in range(k):
                        tables[t, i, c] += xj * codebooks_t[s, j, c]
            if m == SUM_GROUP:
                for o in range(n_out):
                    acc = np.float32(0.0)
                    for i in range(SUM_GROUP):
                        acc += tables[t, i, codes_t[s0 + i, o]]
                    partial[t, o] += acc
            else:
                for o in range(n_out):
                    acc = np.float32(0.0)
                    for i in range(m):
                        acc += tables[t, i, codes_t[s0 + i, o]]
                    partial[t, o] += acc
    for o in prange(n_out):
        acc = np.float32(0.0)
        for t in range(nthreads):
            acc += partial[t, o]
        y[o] = acc


@njit(cache=True, fastmath=True, parallel=True)
def pq_matmul(x, codebooks_t, codes_t, y, threads):
    """``Y = X W_hat^T`` for a batch ``x`` (batch x in); ``codes_t`` is (S, out) uint8.

    As in the sparse batched kernel, the parallel body creates no array views (numba then
    marks the arrays ``noalias``) and full batch blocks use a constant trip count.
    """
    batch, n_in = x.shape
    n_sub, d, k = codebooks_t.shape
    n_out = codes_t.shape[1]
    n_groups = (n_sub + SUM_GROUP - 1) // SUM_GROUP
    nthreads = min(threads, n_groups)
    for b0 in range(0, batch, BATCH_BLOCK):
        bb = min(BATCH_BLOCK, batch - b0)
        full = bb == BATCH_BLOCK
        xt = zeros64((n_sub * d, bb))  # 64-byte aligned rows: see _aligned
        for j in prange(n_in):
            for b in range(bb):
                xt[j, b] = x[b0 + b, j]
        partial = zeros64((nthreads, n_out, bb))
        tables = empty64((nthreads, SUM_GROUP, k, bb))
        for t in prange(nthreads):
            for g in range(n_groups * t // nthreads, n_groups * (t + 1) // nthreads):
                s0 = g * SUM_GROUP
                m = min(SUM_GROUP, n_sub - s0)
                for i in range(m):
                    s = s0 + i
                    for c in range(k):
                        w0 = codebooks_t[s, 0, c]
                        for b in range(bb):
                            tables[t, i, c, b] = w0 * xt[s * d, b]
                        for j in range(1, d):
                            wj = codebooks_t[s, j, c]
                            for b in range(bb):
                                tables[t, i, c, b] += wj * xt[s * d + j, b]
                if m == SUM_GROUP:
                    for o in range(n_out):
                        c0 = codes_t[s0, o]
                        c1 = codes_t[s0 + 1, o]
                        c2 = codes_t[s0 + 2, o]
                        c3 = codes_t[s0 + 3, o]
                        c4 = codes_t[s0 + 4, o]
                        c5 = codes_t[s0 + 5, o]
                        c6 = codes_t[s0 + 6, o]
                        c7 = codes_t[s0 + 7, o]
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
                            c = codes_t[s0 + i, o]
                            for b in range(bb):
                                partial[t, o, b] += tables[t, i, c, b]
        for b in prange(bb):
            for o in range(n_out):
                acc = np.float32(0.0)
                for t in range(nthreads):
                    acc += partial[t, o, b]
                y[b0 + b, o] = acc
