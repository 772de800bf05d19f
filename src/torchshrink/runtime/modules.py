"""Runtime modules: Linear / Conv2d layers that run a compressed weight directly.

A *kernel weight* is any object with ``in_features``, ``out_features``, ``matmul(x,
bias)`` (``x @ W.T + bias`` without decoding ``W``), ``to_dense()`` and ``weight_bytes``:
:class:`~torchshrink.runtime.shared.SharedWeightsKernel` (EIE-style sparse shared
weights), :class:`~torchshrink.runtime.sparse.SparseKernel` (pruned fp32, CSR) and
:class:`~torchshrink.runtime.pq.PQKernel` (Q-CNN lookup tables) are three. A form's
``runtime`` builds its kernel weight from the packed value and wraps the layer with
:func:`compressed_layer`; this module knows no form.

Both modules are :class:`~torchshrink.runtime.dispatch.Dispatching`: once the loader
gives them their decoded dense twin, each input shape runs the path measured faster on
this machine (kernel or dense), which changes speed only.

A convolution whose kernel weight is sparse (it has ``nnz``) runs as a *direct sparse
convolution* (:mod:`._conv_kernels`: per output channel, its nonzero taps times shifted
input planes, no im2col copy); any other kernel weight runs as im2col (``F.unfold``)
followed by the compressed matrix product. Outputs equal the decoded dense layer's
within float32 rounding (the sums run in another order); the tests check that with
explicit tolerances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from . import _conv_kernels
from ._common import float32_numpy, run_kernel
from .dispatch import Dispatching


class CompressedLinear(Dispatching):
    """``y = x W^T + b`` with ``W`` kept compressed (any kernel weight)."""

    def __init__(self, weight: Any, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_ = weight
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dispatch(x)

    def run_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight_.matmul(x, self.bias)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight data the kernel reads per call."""
        return self.weight_.weight_bytes

    def dense_weight(self) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.weight_.to_dense()))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.weight_!r}"


class CompressedConv2d(Dispatching):
    """A Conv2d whose ``out x (in·kh·kw)`` weight matrix is kept compressed.

    Sparse kernel weights (with ``nnz``) run the direct sparse convolution from their
    nonzero taps (``taps_*``: per output channel, input offsets and float32 values);
    others run as im2col + ``weight.matmul``.
    """

    def __init__(self, conv: nn.Conv2d, weight: Any, bias: torch.Tensor | None) -> None:
        super().__init__()
        if not im2col_ok(conv):
            raise ModelError("CompressedConv2d supports groups=1 and numeric zero padding only")
        self.weight_ = weight
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.direct = getattr(weight, "nnz", None) is not None
        self._bias_np = np.zeros(self.out_channels, np.float32) if bias is None else self.bias.numpy()
        self._taps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (ph, pw), (dh, dw), (sh, sw) = self.kernel_size, self.padding, self.dilation, self.stride
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def taps(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per output channel pointers, padded-plane offsets and values of the nonzero taps (for input h x w)."""
        got = self._taps.get((h, w))
        if got is None:
            (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
            hp, wp = h + 2 * ph, w + 2 * pw
            dense = np.asarray(self.weight_.to_dense(), np.float32).reshape(self.out_channels, -1, kh, kw)
            o, c, ky, kx = np.nonzero(dense)
            ptr = np.zeros(self.out_channels + 1, np.int64)
            np.cumsum(np.bincount(o, minlength=self.out_channels), out=ptr[1:])
            off = (c * hp * wp + ky * dh * wp + kx * dw).astype(np.int32)
            got = (ptr, off, dense[o, c, ky, kx].astype(np.float32))
            self._taps = {(h, w): got}  # one input size at a time (a model sees one)
        return got

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dispatch(x)

    def run_kernel(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ModelError(f"CompressedConv2d expects input (batch, {self.in_channels}, H, W). "
                             f"Got {tuple(x.shape)}.")
        n, _, h, w = x.shape
        oh, ow = self._out_hw(h, w)
        if not self.direct:
            cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
            y = self.weight_.matmul(cols.transpose(1, 2), self.bias)  # (n, oh*ow, out)
            return y.transpose(1, 2).reshape(n, self.out_channels, oh, ow)
        ptr, off, val = self.taps(h, w)
        xa = float32_numpy(x)
        y = np.empty((n, self.out_channels, oh, ow), np.float32)
        args = (xa, ptr, off, val, self._bias_np, *self.padding, *self.stride, oh, ow, y)
        run_kernel(_conv_kernels.sparse_conv2d, val.size * oh * ow * n, *args)
        out = torch.from_numpy(y)
        return out if x.dtype == torch.float32 else out.to(x.dtype)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight data a call reads: the taps (direct) or the kernel weight's (im2col)."""
        if self.direct:
            ptr, off, val = next(iter(self._taps.values()), (None, None, None))
            nnz = self.weight_.nnz if val is None else val.size
            return 8 * (self.out_channels + 1) + 8 * nnz  # int64 pointers, int32 offsets, fp32 values
        return self.weight_.weight_bytes

    def dense_weight(self) -> torch.Tensor:
        k = self.kernel_size
        return torch.from_numpy(np.ascontiguousarray(self.weight_.to_dense())).reshape(self.out_channels, -1, *k)


def im2col_ok(conv: nn.Conv2d) -> bool:
    """True for the convolutions :class:`CompressedConv2d` runs (groups 1, numeric zero padding)."""
    return conv.groups == 1 and not isinstance(conv.padding, str) and conv.padding_mode == "zeros"


def compressed_layer(layer: nn.Module, weight: Any) -> nn.Module | None:
    """The runtime twin of a plain Linear / Conv2d running ``weight`` (a kernel weight), or None.

    None when there is no kernel weight or the layer is of a kind the modules do not run.
    """
    if weight is None:
        return None
    if isinstance(layer, nn.Linear):
        return CompressedLinear(weight, layer.bias)
    if isinstance(layer, nn.Conv2d) and im2col_ok(layer):
        return CompressedConv2d(layer, weight, layer.bias)
    return None


def runtime_layers(model: nn.Module) -> int:
    """Modules of ``model`` that run compressed weights (those reporting ``weight_bytes``; a wrapper once)."""
    count, inside = 0, set()
    for m in model.modules():
        if id(m) not in inside and hasattr(m, "weight_bytes"):
            count += 1
            inside.update(id(c) for c in m.modules())
    return count
