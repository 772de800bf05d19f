"""Runtime modules: compressed layers that run their packed weights directly.

``torchshrink.format.load(path, dense=False)`` replaces each Linear / Conv2d whose weight
is stored in a packed form by one of these; every other layer stays plain PyTorch.

* ``shared`` weights (pruned + k-means, Deep Compression) -> :class:`CompressedLinear` /
  :class:`CompressedConv2d` on a :class:`~torchshrink.runtime.sparse.SparseSharedWeight`
  (EIE-style: codebook indices and relative positions, zero activations skipped).
* ``pq`` weights (Q-CNN) -> the same modules on a :class:`~torchshrink.runtime.pq.PQWeight`
  (lookup tables of input sub-vector x codeword products).

A convolution runs as im2col (``F.unfold``) followed by the compressed matrix product.
Outputs equal the decoded dense layer's within float32 rounding (the sums run in another
order); the tests check that with explicit tolerances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .pq import PQWeight, pq_matmul
from .sparse import SparseSharedWeight, sparse_shared_matmul

CompressedWeight = SparseSharedWeight | PQWeight


def weight_from_packed(packed: dict[str, Any]) -> CompressedWeight | None:
    """The kernel representation of a packed form, or None when no kernel runs it."""
    form = packed["form"]
    shape = [int(s) for s in packed["shape"]]
    rows, cols = shape[0], int(np.prod(shape[1:]))
    if form == "shared":
        table = np.asarray(packed["codebook"], np.float32)
        if table.size - 1 > 256 or table.size < 2:
            return None  # the kernels hold codes in uint8
        idx = np.asarray(packed["indices"]).reshape(rows, cols).astype(np.int64)
        r, c = np.nonzero(idx)
        indptr = np.zeros(rows + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=rows), out=indptr[1:])
        bits = max(1, int(np.ceil(np.log2(table.size - 1))) if table.size > 2 else 1)
        return SparseSharedWeight.from_csr((rows, cols), indptr, c, idx[r, c] - 1, table[1:], bits=bits)
    if form == "pq":
        cb = np.asarray(packed["codebooks"], np.float32)
        if cb.shape[1] > 256:
            return None
        return PQWeight(cb, np.asarray(packed["codes"]), in_features=cols)
    return None


def _matmul(x: torch.Tensor, w: CompressedWeight, bias: torch.Tensor | None) -> torch.Tensor:
    fn = sparse_shared_matmul if isinstance(w, SparseSharedWeight) else pq_matmul
    return fn(x, w, bias)


class CompressedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` kept compressed (shared-sparse or PQ)."""

    def __init__(self, weight: CompressedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_ = weight
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _matmul(x, self.weight_, self.bias)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight data the kernel reads per call."""
        w = self.weight_
        return w.nbytes_rows if isinstance(w, SparseSharedWeight) else w.nbytes

    def dense_weight(self) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.weight_.to_dense()))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.weight_!r}"


class CompressedConv2d(nn.Module):
    """A Conv2d whose ``out x (in·kh·kw)`` weight matrix is kept compressed; runs as im2col."""

    def __init__(self, conv: nn.Conv2d, weight: CompressedWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ModelError(f"CompressedConv2d supports groups=1, got groups={conv.groups}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ModelError("CompressedConv2d supports numeric zero padding only")
        self.weight_ = weight
        self.out_channels, self.kernel_size = conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        y = _matmul(cols.transpose(1, 2), self.weight_, self.bias)  # (n, oh*ow, out)
        return y.transpose(1, 2).reshape(n, self.out_channels, oh, ow)

    @property
    def weight_bytes(self) -> int:
        w = self.weight_
        return w.nbytes_rows if isinstance(w, SparseSharedWeight) else w.nbytes

    def dense_weight(self) -> torch.Tensor:
        k = self.kernel_size
        return torch.from_numpy(np.ascontiguousarray(self.weight_.to_dense())).reshape(self.out_channels, -1, *k)


def compress_module(layer: nn.Module, packed: dict[str, Any]) -> nn.Module | None:
    """The runtime twin of a plain Linear / Conv2d (holding decoded weights), or None."""
    if not isinstance(layer, (nn.Linear, nn.Conv2d)):
        return None
    if isinstance(layer, nn.Conv2d) and (layer.groups != 1 or isinstance(layer.padding, str)
                                         or layer.padding_mode != "zeros"):
        return None
    w = weight_from_packed(packed)
    if w is None:
        return None
    bias = layer.bias
    if isinstance(layer, nn.Linear):
        return CompressedLinear(w, bias)
    return CompressedConv2d(layer, w, bias)
