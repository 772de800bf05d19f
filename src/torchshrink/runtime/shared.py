"""Sparse shared-weight linear layers computed without decoding (EIE, Han et al. 2016).

A pruned, weight-shared layer (Deep Compression) keeps for every nonzero weight only a
``bits``-wide index into a per-layer codebook of ``K <= 2**bits`` nonzero values. EIE
(Han et al., ISCA 2016, §III) multiplies such a layer by an activation vector directly:
it walks the compressed columns of the *nonzero* inputs only (dynamic activation
sparsity: after a ReLU about half the inputs are zero) and looks each weight up in the
codebook as it goes.

:class:`SharedWeightsKernel` holds two in-memory layouts of the same nonzeros, because on
a CPU neither wins everywhere (measured on a 2-core AVX-512 Xeon, see
``benchmarks/kernels.py``):

* **row chunks** -- per output row, the column indices of the nonzeros grouped by code
  and cut into chunks of 8 with one shared code per chunk (short chunks padded with an
  index of a zero input). One vector gather and one multiply per chunk; every
  nonzero is read once whatever the input. Used for batches and for batch-1 inputs with
  few zeros.
* **column lists** (EIE's CSC order) -- per input column, the (row, code) pairs. The
  batch-1 kernel visits only columns whose input is nonzero, computes the ``K`` products
  ``codebook[k] * x_j`` once per column (EIE's shared-weight trick) and scatter-adds by
  code. Its cost falls with the input's density; it is chosen when
  ``active nonzeros * EIE_COST_RATIO < row-chunk entries``.

Indices are stored absolute within their row/column as ``uint16`` when the dimension
allows (``uint32`` otherwise) and codes as ``uint8``; the relative (zero-run) indices of
EIE and Deep Compression belong to the file codec (``torchshrink.format.sparse``), since
decoding a run-length stream is sequential and would serialize the vector kernels.
Kernels are inference-only (no autograd) and compute in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit

from ..errors import ModelError
from . import _shared_kernels as kern
from ._common import MatrixShape, check_int, frozen, input_matrix, output_tensor, run_kernel

#: Cost of one visited nonzero in the column (scalar scatter) kernel relative to one
#: row-chunk entry (vector gather); measured 2.0-2.7 on the benchmark machine (1 and 2
#: threads), so the EIE path is taken when fewer than about 40 % of the inputs are nonzero.
EIE_COST_RATIO = 2.5
MAX_BITS = 8
_OWNER = "SharedWeightsKernel"


def _index_dtype(largest: int) -> type:
    return np.uint16 if largest <= np.iinfo(np.uint16).max else np.uint32


@njit(cache=True)
def _active_nonzeros(x, col_ptr):
    total = 0
    for j in range(x.size):
        if x[j] != 0:
            total += col_ptr[j + 1] - col_ptr[j]
    return total


@dataclass(frozen=True, eq=False)
class SharedWeightsKernel(MatrixShape):
    """A pruned, weight-shared ``out x in`` matrix in the two kernel layouts.

    Build it with :meth:`from_packed` (a ``shared`` packed value, as k-means weight sharing
    makes it) or :meth:`from_csr`. All arrays are read-only.
    ``chunk_*`` is the row-chunk layout, ``col_*`` the EIE column layout (see module doc).
    """

    shape: tuple[int, int]
    bits: int
    codebook: np.ndarray  # (K,) float32, nonzero, K <= 2**bits
    nnz: int
    chunk_ptr: np.ndarray  # (out + 1,) int64: chunks of row o are chunk_ptr[o]:chunk_ptr[o+1]
    chunk_code: np.ndarray  # (n_chunks,) uint8: the code shared by a chunk
    chunk_index: np.ndarray  # (8 * n_chunks,) uint16/32 column indices; in_features = padding
    col_ptr: np.ndarray  # (in + 1,) int64
    col_row: np.ndarray  # (nnz,) uint16/32 row indices, ascending within a column
    col_code: np.ndarray  # (nnz,) uint8

    @property
    def nbytes_rows(self) -> int:
        """Bytes the row-chunk kernels read per call (pointers, codes, indices, codebook)."""
        return self.chunk_ptr.nbytes + self.chunk_code.nbytes + self.chunk_index.nbytes + self.codebook.nbytes

    @property
    def nbytes_cols(self) -> int:
        """Bytes the EIE column kernel reads per call when every input is nonzero."""
        return self.col_ptr.nbytes + self.col_row.nbytes + self.col_code.nbytes + self.codebook.nbytes

    @property
    def nbytes(self) -> int:
        """Bytes held in memory by both layouts together."""
        return self.nbytes_rows + self.nbytes_cols - self.codebook.nbytes

    @classmethod
    def from_packed(cls, packed: dict) -> SharedWeightsKernel | None:
        """The kernel layouts of a ``shared`` packed value (``codebook[0] == 0``: index 0 is a
        pruned zero), or None when the kernels cannot run it (more than 256 nonzero levels,
        a first level that is not 0, or a 0 among the other levels)."""
        table = np.asarray(packed["codebook"], np.float32)
        if table.size - 1 > 256 or table.size < 2 or table[0] != 0 or not np.all(table[1:]):
            return None  # codes are uint8; index 0 is the pruned zero and no other level may be 0
        shape = [int(s) for s in packed["shape"]]
        rows, cols = shape[0], int(np.prod(shape[1:]))
        idx = np.asarray(packed["indices"]).reshape(rows, cols)  # uint8/16: no int64 copy of the weight
        r, c = np.nonzero(idx)
        indptr = np.zeros(rows + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=rows), out=indptr[1:])
        bits = max(1, int(np.ceil(np.log2(table.size - 1))) if table.size > 2 else 1)
        return cls.from_csr((rows, cols), indptr, c, idx[r, c].astype(np.int64) - 1, table[1:], bits=bits)

    @classmethod
    def from_csr(
        cls,
        shape: tuple[int, int],
        indptr: np.ndarray,
        indices: np.ndarray,
        codes: np.ndarray,
        codebook: np.ndarray,
        bits: int = 4,
    ) -> SharedWeightsKernel:
        """Build from CSR arrays of codes (e.g. decoded from a ``.tsk`` file).

        ``indptr`` (out + 1), ``indices`` (column of each nonzero) and ``codes`` (its
        codebook index) as in ``scipy.sparse.csr_matrix``; duplicates are not allowed.
        """
        bits = check_int(bits, "bits", _OWNER, 1, MAX_BITS)
        if len(shape) != 2:
            raise ModelError(f"{_OWNER}: shape must be (out_features, in_features). Got {tuple(shape)}.")
        out_f = check_int(shape[0], "shape[0]", _OWNER, 1, 1 << 31)
        in_f = check_int(shape[1], "shape[1]", _OWNER, 1, (1 << 31) - 1)
        indptr = np.asarray(indptr, np.int64)
        indices = np.asarray(indices)
        codes = np.asarray(codes)
        cb = _check_codebook(codebook, bits)
        n = indices.size
        if indptr.shape != (out_f + 1,) or indptr[0] != 0 or indptr[-1] != n or np.any(np.diff(indptr) < 0):
            raise ModelError(f"{_OWNER}: indptr must be non-decreasing, of length {out_f + 1}, from 0 to {n}.")
        if codes.shape != (n,) or (n and (codes.min() < 0 or codes.max() >= cb.size)):
            raise ModelError(f"{_OWNER}: codes must hold one index in [0, {cb.size}) per stored column index.")
        if n and (indices.min() < 0 or indices.max() >= in_f):
            raise ModelError(f"{_OWNER}: column indices must lie in [0, {in_f}).")
        rows = np.repeat(np.arange(out_f, dtype=np.int64), np.diff(indptr))
        cols = indices.astype(np.int64)
        if n and np.unique(rows * in_f + cols).size != n:
            raise ModelError(f"{_OWNER}: the CSR arrays hold duplicate (row, column) entries; sum them first.")
        return cls._build((out_f, in_f), rows, cols, codes.astype(np.uint8), cb, bits)

    @classmethod
    def _build(cls, shape, rows, cols, codes, cb, bits) -> SharedWeightsKernel:
        out_f, in_f = shape
        k = max(cb.size, 1)
        rows = rows.astype(np.int64)
        cols = cols.astype(np.int64)
        # Row chunks: segment = (row, code); each segment padded to a multiple of CHUNK.
        seg = rows * k + codes
        count = np.bincount(seg, minlength=out_f * k)
        n_chunks = -(-count // kern.CHUNK)
        chunk_start = np.zeros(out_f * k + 1, np.int64)
        np.cumsum(n_chunks, out=chunk_start[1:])
        order = np.lexsort((cols, seg))
        seg_sorted = seg[order]
        first = np.zeros(out_f * k + 1, np.int64)
        np.cumsum(count, out=first[1:])
        slot = chunk_start[seg_sorted] * kern.CHUNK + np.arange(order.size) - first[seg_sorted]
        chunk_index = np.full(chunk_start[-1] * kern.CHUNK, in_f, _index_dtype(in_f))
        chunk_index[slot] = cols[order]
        chunk_code = np.repeat(np.tile(np.arange(k, dtype=np.uint8), out_f), n_chunks)
        # Column lists (CSC), rows ascending within a column.
        order = np.lexsort((rows, cols))
        col_ptr = np.zeros(in_f + 1, np.int64)
        np.cumsum(np.bincount(cols, minlength=in_f), out=col_ptr[1:])
        return cls(
            shape=(int(out_f), int(in_f)),
            bits=int(bits),
            codebook=frozen(cb.astype(np.float32)),
            nnz=int(rows.size),
            chunk_ptr=frozen(chunk_start[::k]),
            chunk_code=frozen(chunk_code),
            chunk_index=frozen(chunk_index),
            col_ptr=frozen(col_ptr),
            col_row=frozen(rows[order].astype(_index_dtype(out_f - 1))),
            col_code=frozen(codes[order].astype(np.uint8)),
        )

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T + bias`` (:func:`shared_matmul`)."""
        return shared_matmul(x, self, bias)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight data a call reads (the row-chunk layout)."""
        return self.nbytes_rows

    def to_dense(self) -> np.ndarray:
        """Decode to the dense float32 ``out x in`` matrix (for references and export)."""
        w = np.zeros(self.shape, np.float32)
        cols = np.repeat(np.arange(self.in_features), np.diff(self.col_ptr))
        w[self.col_row.astype(np.int64), cols] = self.codebook[self.col_code]
        return w

    def __repr__(self) -> str:
        density = self.nnz / (self.shape[0] * self.shape[1])
        return (
            f"SharedWeightsKernel(shape={self.shape}, nnz={self.nnz} ({density:.1%}), "
            f"codebook={self.codebook.size} x {self.bits} bits, nbytes={self.nbytes})"
        )


def _check_codebook(codebook: Any, bits: int) -> np.ndarray:
    cb = np.asarray(codebook)
    if cb.ndim != 1 or cb.dtype.kind not in "fiu" or cb.size > (1 << bits):
        raise ModelError(
            f"{_OWNER}: the codebook must be a 1-D real array of at most 2**bits = {1 << bits} "
            f"entries. Got shape {cb.shape} and dtype {cb.dtype}; raise 'bits' or shrink the codebook."
        )
    cb = cb.astype(np.float32)
    if not np.isfinite(cb).all() or np.any(cb == 0):
        raise ModelError(f"{_OWNER}: codebook entries must be finite and nonzero (zero means pruned). Got {cb}.")
    return cb


def shared_matmul(x: torch.Tensor, w: SharedWeightsKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` a :class:`SharedWeightsKernel`, never decoded to dense.

    ``x`` has shape ``(*, in_features)``; a single vector takes the batch-1 path (the EIE
    column kernel, which skips zero inputs, when the input is sparse enough, else the
    row-chunk gather kernel), larger batches the batched row-chunk kernel. Floating
    inputs of other precisions are computed in float32 and returned in their dtype.
    """
    xm, lead, dtype = input_matrix(x, w.in_features, w.shape, "shared_matmul")
    y = np.empty((xm.shape[0], w.out_features), np.float32)
    if xm.shape[0] == 1:
        xv = xm[0]
        active = _active_nonzeros(xv, w.col_ptr)
        if active * EIE_COST_RATIO < w.chunk_index.size:
            run_kernel(kern.cols_matvec, active, xv, w.col_ptr, w.col_row, w.col_code, w.codebook, y[0])
        else:
            args = (xv, w.chunk_ptr, w.chunk_code, w.chunk_index, w.codebook, y[0])
            run_kernel(kern.rows_matvec, w.chunk_index.size, *args)
    elif xm.shape[0] > 1:
        work = w.chunk_index.size * xm.shape[0]
        run_kernel(kern.rows_matmul, work, xm, w.chunk_ptr, w.chunk_code, w.chunk_index, w.codebook, y)
    return output_tensor(y, lead, dtype, bias, "shared_matmul")


def reference_shared_matmul(
    x: torch.Tensor, w: SharedWeightsKernel, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain-PyTorch twin of :func:`shared_matmul`: decode to dense, then ``F.linear``."""
    xm, lead, dtype = input_matrix(x, w.in_features, w.shape, "reference_shared_matmul")
    y = F.linear(torch.from_numpy(xm), torch.from_numpy(w.to_dense()))
    return output_tensor(y.numpy(), lead, dtype, bias, "reference_shared_matmul")
