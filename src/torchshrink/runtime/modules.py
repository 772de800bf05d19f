"""Runtime modules: Linear / Conv2d layers that run a compressed weight directly.

A *kernel weight* is any object with ``in_features``, ``out_features``, ``matmul(x,
bias)`` (``x @ W.T + bias`` without decoding ``W``), ``to_dense()`` and ``weight_bytes``:
:class:`~torchshrink.runtime.shared.SharedWeightsKernel` (EIE-style sparse shared
weights) and :class:`~torchshrink.runtime.pq.PQKernel` (Q-CNN lookup tables) are two.
A form's ``runtime`` builds its kernel weight from the packed value and wraps the layer
with :func:`compressed_layer`; this module knows no form.

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


class CompressedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` kept compressed (any kernel weight)."""

    def __init__(self, weight: Any, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight_ = weight
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight_.matmul(x, self.bias)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight data the kernel reads per call."""
        return self.weight_.weight_bytes

    def dense_weight(self) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.weight_.to_dense()))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight={self.weight_!r}"


class CompressedConv2d(nn.Module):
    """A Conv2d whose ``out x (in·kh·kw)`` weight matrix is kept compressed; runs as im2col."""

    def __init__(self, conv: nn.Conv2d, weight: Any, bias: torch.Tensor | None) -> None:
        super().__init__()
        if not im2col_ok(conv):
            raise ModelError("CompressedConv2d supports groups=1 and numeric zero padding only")
        self.weight_ = weight
        self.out_channels, self.kernel_size = conv.out_channels, conv.kernel_size
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1) // self.stride[1] + 1
        y = self.weight_.matmul(cols.transpose(1, 2), self.bias)  # (n, oh*ow, out)
        return y.transpose(1, 2).reshape(n, self.out_channels, oh, ow)

    @property
    def weight_bytes(self) -> int:
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
    """Modules of ``model`` that run compressed weights (those reporting ``weight_bytes``)."""
    return sum(1 for m in model.modules() if hasattr(m, "weight_bytes"))
