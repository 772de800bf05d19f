"""Product-quantized linear layers run by lookup tables (Q-CNN, Wu et al. CVPR 2016).

A weight ``W`` (out x in) is split along the input dimension into ``S`` sub-spaces of
length ``d``; each sub-space has a codebook of ``K <= 256`` codewords and every
(row, sub-space) pair stores the ``uint8`` index of its codeword (product quantization,
Jégou et al. 2011; Gong et al. 2014 §3.3). The decoded weight is
``W_hat[o, s*d:(s+1)*d] = codebooks[s, codes[o, s]]``.

Q-CNN's test-phase computation (§3.1, Eq. 4) never forms ``W_hat``: per sub-space it
computes the table ``T[s, k] = x_s . c_{s,k}`` (``in * K`` multiply-adds in all) and then
each output is a sum of ``S`` table entries, ``y[o] = sum_s T[s, code[o, s]]``, so the
work falls from ``out * in`` multiply-adds to ``out * in / d`` additions. See
``_pq_kernels.py`` for the batch-1 and batched kernels.

Input lengths not divisible by ``d``: the last sub-space is zero-padded (the weight when
training, the input at inference), so any ``in_features`` works and padding never
changes a result; :attr:`PQKernel.in_features` records the true length.

Convolutions run as im2col (:class:`~torchshrink.runtime.modules.CompressedConv2d`) and
then these same kernels: per output pixel, the tables are the pixel's input sub-vectors x
codewords. Q-CNN's conv layout (sub-vectors over input channels at each kernel position,
``"layout": "channels"`` in the packed value) keeps its codes in ``(kh, kw, c_in)`` column
order; :attr:`PQKernel.input_order` then permutes the im2col columns ``(c_in, kh, kw)``
into that order before the kernel runs (a gather of the input, ``in`` per row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from . import _pq_kernels as kern
from ._common import check_int, frozen, input_matrix, output_tensor, run_kernel

MAX_CODEWORDS = 256
_OWNER = "PQKernel"


@dataclass(frozen=True, eq=False)
class PQKernel:
    """Codebooks ``(S, K, d)`` float32 and codes ``(out, S)`` uint8 of a product-quantized weight.

    ``in_features`` defaults to ``S * d``; a smaller value (greater than ``(S - 1) * d``)
    means the last sub-space was zero-padded. The kernels read the two arrays transposed,
    ``codebooks_t`` (S, d, K) and ``codes_t`` (S, out), so they are stored that way and
    ``codebooks`` / ``codes`` are views of them; all arrays are read-only.
    """

    codebooks: np.ndarray
    codes: np.ndarray
    in_features: int | None = None
    input_order: np.ndarray | None = None
    codebooks_t: np.ndarray = field(init=False, repr=False)
    codes_t: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cb = np.asarray(self.codebooks)
        codes = np.asarray(self.codes)
        if cb.ndim != 3 or cb.dtype.kind != "f" or 0 in cb.shape or cb.shape[1] > MAX_CODEWORDS:
            raise ModelError(
                f"{_OWNER}: codebooks must be a float array of shape (S, K, d) with 1 <= K <= "
                f"{MAX_CODEWORDS}. Got shape {cb.shape} and dtype {cb.dtype}."
            )
        n_sub, k, d = cb.shape
        if codes.ndim != 2 or codes.shape[1] != n_sub or codes.shape[0] == 0 or codes.dtype.kind not in "iu":
            raise ModelError(
                f"{_OWNER}: codes must be an integer array of shape (out_features, S={n_sub}). "
                f"Got shape {codes.shape} and dtype {codes.dtype}."
            )
        if codes.min() < 0 or codes.max() >= k:
            raise ModelError(f"{_OWNER}: codes must lie in [0, K={k}). Got values in [{codes.min()}, {codes.max()}].")
        if not np.isfinite(cb).all():
            raise ModelError(f"{_OWNER}: codebooks contain NaN or infinite values.")
        in_f = n_sub * d if self.in_features is None else self.in_features
        in_f = check_int(in_f, "in_features", _OWNER, (n_sub - 1) * d + 1, n_sub * d)
        cb_t = frozen(np.array(cb.transpose(0, 2, 1), dtype=np.float32, order="C"))
        codes_t = frozen(np.array(codes.T, dtype=np.uint8, order="C"))
        object.__setattr__(self, "codebooks_t", cb_t)
        object.__setattr__(self, "codebooks", cb_t.transpose(0, 2, 1))
        object.__setattr__(self, "codes_t", codes_t)
        object.__setattr__(self, "codes", codes_t.T)
        object.__setattr__(self, "in_features", in_f)
        if self.input_order is not None:
            order = np.asarray(self.input_order, dtype=np.int64)
            if order.shape != (in_f,) or not np.array_equal(np.sort(order), np.arange(in_f)):
                raise ModelError(f"{_OWNER}: input_order must be a permutation of range({in_f}).")
            object.__setattr__(self, "input_order", frozen(order))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.codes.shape[0], self.in_features)

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def subvector(self) -> int:
        return self.codebooks.shape[2]

    @property
    def codewords(self) -> int:
        return self.codebooks.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held in memory, all of which each kernel call (or batch block) reads."""
        return self.codebooks_t.nbytes + self.codes_t.nbytes

    @classmethod
    def from_packed(cls, packed: dict) -> PQKernel | None:
        """The kernel layout of a ``pq`` packed value, or None when the kernels cannot run it (K > 256)."""
        cb = np.asarray(packed["codebooks"], np.float32)
        if cb.shape[1] > MAX_CODEWORDS:
            return None
        shape = [int(s) for s in packed["shape"]]
        order = None
        if packed.get("layout", "rows") == "channels":
            from ..quantize.qcnn import channel_order

            order = channel_order(shape)
        return cls(cb, np.asarray(packed["codes"]), in_features=int(np.prod(shape[1:])), input_order=order)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W_hat.T + bias`` (:func:`pq_matmul`)."""
        return pq_matmul(x, self, bias)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight data a call reads."""
        return self.nbytes

    def to_dense(self) -> np.ndarray:
        """Decode to ``W_hat`` (out x in_features), float32."""
        n_sub = self.codebooks.shape[0]
        w = self.codebooks[np.arange(n_sub)[None, :], self.codes]  # (out, S, d)
        w = w.reshape(self.out_features, -1)[:, : self.in_features]
        if self.input_order is None:
            return np.ascontiguousarray(w)
        dense = np.empty_like(w)
        dense[:, self.input_order] = w
        return dense

    def __repr__(self) -> str:
        n_sub, k, d = self.codebooks.shape
        return f"PQKernel(shape={self.shape}, subvector={d}, subspaces={n_sub}, codewords={k}, nbytes={self.nbytes})"


def pq_matmul(x: torch.Tensor, w: PQKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W_hat.T + bias`` by Q-CNN lookup tables, without decoding ``W_hat``.

    ``x`` has shape ``(*, in_features)``; one vector takes the batch-1 kernel, more the
    batched kernel. Floating inputs of other precisions are computed in float32 and
    returned in their dtype.
    """
    xm, lead, dtype = input_matrix(x, w.in_features, w.shape, "pq_matmul")
    if w.input_order is not None:
        xm = np.ascontiguousarray(xm[:, w.input_order])
    y = np.empty((xm.shape[0], w.out_features), np.float32)
    work = w.codes_t.size * xm.shape[0]
    if xm.shape[0] == 1:
        run_kernel(kern.pq_matvec, work, xm[0], w.codebooks_t, w.codes_t, y[0])
    elif xm.shape[0] > 1:
        run_kernel(kern.pq_matmul, work, xm, w.codebooks_t, w.codes_t, y)
    return output_tensor(y, lead, dtype, bias, "pq_matmul")


def reference_pq_matmul(x: torch.Tensor, w: PQKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch twin of :func:`pq_matmul`: decode ``W_hat``, then ``F.linear``."""
    xm, lead, dtype = input_matrix(x, w.in_features, w.shape, "reference_pq_matmul")
    y = F.linear(torch.from_numpy(xm), torch.from_numpy(w.to_dense()))
    return output_tensor(y.numpy(), lead, dtype, bias, "reference_pq_matmul")
