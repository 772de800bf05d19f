"""fp32 sparse (pruned-only) linear layers computed without decoding: CSR kernels.

A magnitude-pruned layer (Han et al. 2015, "Learning both Weights and Connections") keeps
its nonzero float32 weights; the file stores them relative-indexed (Deep Compression
§3, Fig. 2), and this kernel weight holds them as CSR in memory: per output row the
column indices (``uint16`` where the width allows, else ``uint32``) and the values.
``y = W x`` then reads ``nnz * (4 + 2)`` bytes instead of ``4 * out * in``:

* batch 1: per row, a gather-multiply-add over the row's nonzeros (``y_o = Σ_p v_p
  x_{j_p}``), rows split between threads;
* batches: the input block is transposed to ``x^T`` (in x block) so that each stored
  column selects one contiguous vector, and a row accumulates ``v_p · x^T[j_p, :]``
  over its nonzeros (every weight is read once per block of ``BATCH_BLOCK`` rows).

Whether this beats dense BLAS depends on the density, the shape and the machine; the
runtime's measured dispatch (:mod:`torchshrink.runtime.dispatch`) runs whichever is
faster. :func:`reference_sparse_matmul` is the plain-PyTorch twin (decode, ``F.linear``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange

from ..errors import ModelError
from ._common import MatrixShape, frozen, input_matrix, output_tensor, run_kernel

#: Batch rows per pass of the batched kernel (the transposed block stays in L2).
BATCH_BLOCK = 64
#: Above this density a CSR layout reads more bytes than the dense matrix saves: no kernel.
MAX_DENSITY = 0.5
_OWNER = "SparseKernel"


@njit(cache=True, fastmath=True, parallel=True)
def csr_matvec(x, indptr, indices, values, y, threads):
    """``y = W x`` for one input vector (W in CSR)."""
    for o in prange(y.size):
        idx = indices[indptr[o] : indptr[o + 1]]
        val = values[indptr[o] : indptr[o + 1]]
        acc = np.float32(0.0)
        for p in range(idx.size):
            acc += val[p] * x[idx[p]]
        y[o] = acc


@njit(cache=True, fastmath=True, parallel=True)
def csr_matmul(x, indptr, indices, values, y, threads):
    """``Y = X W^T`` for a batch ``x`` (batch x in), in blocks of ``BATCH_BLOCK`` transposed rows."""
    batch, n = x.shape
    n_out = y.shape[1]
    for b0 in range(0, batch, BATCH_BLOCK):
        bb = min(BATCH_BLOCK, batch - b0)
        xt = np.empty((n, bb), np.float32)
        for j in prange(n):
            for b in range(bb):
                xt[j, b] = x[b0 + b, j]
        yt = np.zeros((n_out, bb), np.float32)
        for o in prange(n_out):
            for p in range(indptr[o], indptr[o + 1]):
                v = values[p]
                j = indices[p]
                for b in range(bb):
                    yt[o, b] += v * xt[j, b]
        for b in prange(bb):
            for o in range(n_out):
                y[b0 + b, o] = yt[o, b]


@dataclass(frozen=True, eq=False)
class SparseKernel(MatrixShape):
    """A pruned float32 ``out x in`` matrix in CSR (read-only arrays). Build it with :meth:`from_dense`."""

    shape: tuple[int, int]
    indptr: np.ndarray  # (out + 1,) int64
    indices: np.ndarray  # (nnz,) uint16 / uint32 column of each nonzero, ascending within a row
    values: np.ndarray  # (nnz,) float32

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight data a call reads (row pointers, column indices, values)."""
        return self.indptr.nbytes + self.indices.nbytes + self.values.nbytes

    @classmethod
    def from_dense(cls, weight: np.ndarray, max_density: float = MAX_DENSITY) -> SparseKernel | None:
        """The CSR layout of a float32 weight (a Linear's ``out x in``, a conv's ``out x (in·kh·kw)``).

        None when the weight is not float32, not finite, or denser than ``max_density``
        (the CSR layout would read about as many bytes as the dense matrix).
        """
        w = np.asarray(weight)
        if w.dtype != np.float32 or w.ndim < 2 or w.size == 0:
            return None
        w = w.reshape(w.shape[0], -1)
        if not np.isfinite(w).all():
            return None
        r, c = np.nonzero(w)
        if r.size > max_density * w.size:
            return None
        indptr = np.zeros(w.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=w.shape[0]), out=indptr[1:])
        index_dtype = np.uint16 if w.shape[1] <= np.iinfo(np.uint16).max + 1 else np.uint32
        arrays = [frozen(a) for a in (indptr, c.astype(index_dtype), w[r, c].astype(np.float32))]
        return cls((int(w.shape[0]), int(w.shape[1])), *arrays)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T + bias`` (:func:`sparse_matmul`)."""
        return sparse_matmul(x, self, bias)

    def to_dense(self) -> np.ndarray:
        """Decode to the dense float32 ``out x in`` matrix."""
        w = np.zeros(self.shape, np.float32)
        rows = np.repeat(np.arange(self.out_features), np.diff(self.indptr))
        w[rows, self.indices.astype(np.int64)] = self.values
        return w

    def __repr__(self) -> str:
        density = self.nnz / (self.shape[0] * self.shape[1])
        return f"SparseKernel(shape={self.shape}, nnz={self.nnz} ({density:.1%}), weight_bytes={self.weight_bytes})"


def sparse_matmul(x: torch.Tensor, w: SparseKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` a :class:`SparseKernel`; ``x`` is ``(*, in_features)``."""
    if not isinstance(w, SparseKernel):
        raise ModelError(f"sparse_matmul expects a SparseKernel. Got {type(w).__name__}.")
    xm, lead, dtype = input_matrix(x, w.in_features, w.shape, "sparse_matmul")
    y = np.empty((xm.shape[0], w.out_features), np.float32)
    if xm.shape[0] == 1:
        run_kernel(csr_matvec, w.nnz, xm[0], w.indptr, w.indices, w.values, y[0])
    elif xm.shape[0] > 1:
        run_kernel(csr_matmul, w.nnz * xm.shape[0], xm, w.indptr, w.indices, w.values, y)
    return output_tensor(y, lead, dtype, bias, "sparse_matmul")


def reference_sparse_matmul(x: torch.Tensor, w: SparseKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch twin of :func:`sparse_matmul`: decode to dense, then ``F.linear``."""
    xm, lead, dtype = input_matrix(x, w.in_features, w.shape, "reference_sparse_matmul")
    y = F.linear(torch.from_numpy(xm), torch.from_numpy(w.to_dense()))
    return output_tensor(y.numpy(), lead, dtype, bias, "reference_sparse_matmul")
