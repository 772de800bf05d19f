"""numba kernels for sparse shared-weight layers (EIE, Han et al. 2016); see ``sparse.py``.

Two layouts, both built by :mod:`torchshrink.runtime.shared`:

* **row chunks** (gather): each row's nonzeros are sorted by codebook index and cut
  into chunks of ``CHUNK`` column indices that share one code; a short chunk is padded
  with the index ``in_features``, which points at an extra zero input. A chunk costs one
  8-wide gather and one multiply by its shared weight: ``y[o] += cb[k] * sum(x[j])``.
* **column lists** (EIE): per input column, the (row, code) pairs of its nonzeros.
  Only columns whose input is nonzero are visited (dynamic activation sparsity); each
  visit computes the ``K`` products ``cb[k] * x_j`` once and scatter-adds them by code.

Every kernel reads slices (``a[s:e]``) and loops from 0: numba then knows the loop
indices are non-negative and drops the wraparound checks that otherwise stop LLVM from
vectorizing the gathers.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._aligned import empty64, zeros64

#: Column indices per row chunk; 8 float32 lanes make one AVX2/AVX-512 ymm gather.
CHUNK = 8
#: Batch rows processed per pass of the batched kernel: the (in x BATCH_BLOCK) input
#: block stays in L2 while every row's index stream is read once for the whole block.
BATCH_BLOCK = 64


@njit(cache=True, fastmath=True, parallel=True)
def rows_matvec(x, chunk_ptr, chunk_code, chunk_index, codebook, y, threads):
    """``y = W x`` for one input vector through the row-chunk layout (no zero skipping)."""
    n = x.size
    xe = np.empty(n + 1, np.float32)
    xe[:n] = x
    xe[n] = 0.0
    for o in prange(y.size):
        s = chunk_ptr[o]
        e = chunk_ptr[o + 1]
        codes = chunk_code[s:e]
        idx = chunk_index[s * CHUNK : e * CHUNK]
        acc = np.float32(0.0)
        for q in range(codes.size):
            t = np.float32(0.0)
            for lane in range(CHUNK):
                t += xe[idx[q * CHUNK + lane]]
            acc += codebook[codes[q]] * t
        y[o] = acc


@njit(cache=True, fastmath=True, parallel=True)
def cols_matvec(x, col_ptr, col_row, col_code, codebook, y, threads):
    """``y = W x`` for one input vector, visiting only the columns where ``x != 0`` (EIE).

    The active columns are split between threads into ranges of about equal nonzero
    count; each thread scatter-adds into its own partial output, summed at the end.
    """
    active = np.flatnonzero(x)
    nthreads = min(threads, max(1, active.size))
    work = np.zeros(active.size + 1, np.int64)
    for a in range(active.size):
        work[a + 1] = work[a] + col_ptr[active[a] + 1] - col_ptr[active[a]]
    bounds = np.searchsorted(work, (np.arange(nthreads + 1) * work[-1]) // nthreads)
    bounds[0] = 0
    bounds[-1] = active.size
    n_out = y.size
    k = codebook.size
    partial = np.zeros((nthreads, n_out), np.float32)
    for t in prange(nthreads):
        yt = partial[t]
        products = np.empty(k, np.float32)
        for a in range(bounds[t], bounds[t + 1]):
            j = active[a]
            xj = x[j]
            for c in range(k):
                products[c] = codebook[c] * xj
            rows = col_row[col_ptr[j] : col_ptr[j + 1]]
            codes = col_code[col_ptr[j] : col_ptr[j + 1]]
            for p in range(rows.size):
                yt[rows[p]] += products[codes[p]]
    for o in prange(n_out):
        acc = np.float32(0.0)
        for t in range(nthreads):
            acc += partial[t, o]
        y[o] = acc


@njit(cache=True, fastmath=True, parallel=True)
def rows_matmul(x, chunk_ptr, chunk_code, chunk_index, codebook, y, threads):
    """``Y = X W^T`` for a batch ``x`` (batch x in) through the row-chunk layout.

    The batch is processed in blocks of ``BATCH_BLOCK`` rows: the block is transposed to
    ``xt`` (in + 1 x block, last row zero for the padding index) so that each stored
    column index selects one contiguous vector; a chunk adds its 8 selected vectors and
    multiplies the sum by the chunk's shared weight once (the shared-weight trick).

    Two details keep the inner loop free of overhead: the parallel loop body creates no
    array views, so numba's parfor lowering marks ``xt`` and ``yt`` ``noalias`` (no
    runtime overlap checks), and full blocks use the constant trip count
    ``BATCH_BLOCK``, which LLVM unrolls and keeps the row's sums in vector registers
    across all its chunks. A last partial block takes the same code with a variable
    trip count.
    """
    batch, n = x.shape
    n_out = y.shape[1]
    for b0 in range(0, batch, BATCH_BLOCK):
        bb = min(BATCH_BLOCK, batch - b0)
        xt = empty64((n + 1, bb))  # 64-byte aligned rows: see _aligned
        for j in prange(n):
            for b in range(bb):
                xt[j, b] = x[b0 + b, j]
        xt[n, :] = 0.0
        yt = zeros64((n_out, bb))
        full = bb == BATCH_BLOCK
        for o in prange(n_out):
            for q in range(chunk_ptr[o], chunk_ptr[o + 1]):
                w = codebook[chunk_code[q]]
                i0 = chunk_index[q * CHUNK]
                i1 = chunk_index[q * CHUNK + 1]
                i2 = chunk_index[q * CHUNK + 2]
                i3 = chunk_index[q * CHUNK + 3]
                i4 = chunk_index[q * CHUNK + 4]
                i5 = chunk_index[q * CHUNK + 5]
                i6 = chunk_index[q * CHUNK + 6]
                i7 = chunk_index[q * CHUNK + 7]
                if full:
                    for b in range(BATCH_BLOCK):
                        yt[o, b] += w * (
                            ((xt[i0, b] + xt[i1, b]) + (xt[i2, b] + xt[i3, b]))
                            + ((xt[i4, b] + xt[i5, b]) + (xt[i6, b] + xt[i7, b]))
                        )
                else:
                    for b in range(bb):
                        yt[o, b] += w * (
                            ((xt[i0, b] + xt[i1, b]) + (xt[i2, b] + xt[i3, b]))
                            + ((xt[i4, b] + xt[i5, b]) + (xt[i6, b] + xt[i7, b]))
                        )
        for b in prange(bb):
            for o in range(n_out):
                y[b0 + b, o] = yt[o, b]
