"""Binary-weight layers (BinaryConnect, BWN, LAB) run without a multiplication per weight.

:class:`BinaryKernel` holds ``where(positive, α, -α)`` as one bit per weight (LSB-first
bytes per group of 8 inputs, group-major ``codes_t[g, o]``) and α per output channel
(BWN) or per layer (on AVX-512 CPUs also as the bit-plane ``words`` the batch-1 VPERMPS
kernel reads, the same bits in another order). :func:`binary_matmul` computes ``y[o] = α_o · (Σ_{P_o} x - Σ_{N_o} x)``
by the table lookups of :mod:`torchshrink.runtime._lut_kernels` (additions, one
multiplication per output). :func:`reference_binary_matmul` is its plain twin.
:class:`BinaryWeightLinear` / :class:`BinaryWeightConv2d` are the runtime modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from . import _lut_kernels as kern
from ._common import MatrixShape, frozen, input_matrix, output_tensor
from .modules import CompressedConv2d, CompressedLinear
from .ternary import kernel_module, lut_call

_OWNER = "BinaryKernel"


@dataclass(frozen=True, eq=False)
class BinaryKernel(MatrixShape):
    """A binary ``out x in`` matrix: ``codes_t`` (ceil(in/8), out) uint8 sign bits, ``alpha`` (out,) or (1,)."""

    shape: tuple[int, int]
    codes_t: np.ndarray
    alpha: np.ndarray
    words: np.ndarray | None = None

    @classmethod
    def from_signs(cls, positive: np.ndarray, alpha: np.ndarray) -> BinaryKernel:
        """From an ``out x in`` 0/1 array (1 = +α) and α of 1 or ``out`` values."""
        p = np.asarray(positive)
        if p.ndim != 2 or 0 in p.shape or p.dtype.kind not in "uib" or (p.size and int(p.max()) > 1):
            raise ModelError(f"{_OWNER}: positive must be a non-empty 2-D array of 0/1. "
                             f"Got shape {p.shape} and dtype {p.dtype}.")
        a = np.asarray(alpha, np.float32).reshape(-1)
        if a.size not in (1, p.shape[0]) or not np.isfinite(a).all():
            raise ModelError(f"{_OWNER}: alpha must hold 1 or {p.shape[0]} finite values. Got {a.size}.")
        out, n = p.shape
        g = -(-n // kern.BIT_WIDTH)
        padded = np.zeros((out, g * kern.BIT_WIDTH), np.uint8)
        padded[:, :n] = p
        bits = np.packbits(padded, axis=1, bitorder="little")
        words = frozen(kern.bit_planes(p)) if kern.HAS_PERMVAR else None
        return cls((int(out), int(n)), frozen(bits.T), frozen(a), words)

    @classmethod
    def from_packed(cls, packed: dict) -> BinaryKernel:
        """The kernel layout of a ``binary`` packed value (any weight of 2+ dimensions, seen as out x rest)."""
        shape = [int(d) for d in packed["shape"]]
        if len(shape) < 2:
            raise ModelError(f"{_OWNER}: a binary weight needs 2 or more dimensions. Got shape {shape}.")
        return cls.from_signs(np.asarray(packed["positive"]).reshape(shape[0], -1), packed["alpha"])

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight data a call reads (1 bit per weight plus α)."""
        return self.codes_t.nbytes + self.alpha.nbytes

    def signs(self) -> np.ndarray:
        """The ``out x in`` 0/1 array (1 = positive)."""
        return np.unpackbits(self.codes_t.T, axis=1, bitorder="little")[:, : self.in_features]

    def to_dense(self) -> np.ndarray:
        """Decode to the dense float32 ``out x in`` matrix (for references and export)."""
        a = self.alpha.reshape(-1, 1) if self.alpha.size > 1 else self.alpha.reshape(())
        return np.where(self.signs().astype(bool), a, -a).astype(np.float32)

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T + bias`` (:func:`binary_matmul`)."""
        return binary_matmul(x, self, bias)

    def __repr__(self) -> str:
        return f"BinaryKernel(shape={self.shape}, alpha={self.alpha.size} value(s), nbytes={self.weight_bytes})"


def binary_matmul(x: torch.Tensor, w: BinaryKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` a :class:`BinaryKernel`, by sums of activations (no decode)."""
    return lut_call(kern.BINARY, x, w.shape, w.codes_t, w.alpha, bias, "binary_matmul", w.words)


def reference_binary_matmul(x: torch.Tensor, w: BinaryKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch twin of :func:`binary_matmul`: decode to dense, then ``F.linear``."""
    xm, lead, dtype = input_matrix(x, w.in_features, w.shape, "reference_binary_matmul")
    y = F.linear(torch.from_numpy(xm), torch.from_numpy(w.to_dense()))
    return output_tensor(y.numpy(), lead, dtype, bias, "reference_binary_matmul")


class BinaryWeightLinear(CompressedLinear):
    """A Linear layer with a :class:`BinaryKernel` weight."""


class BinaryWeightConv2d(CompressedConv2d):
    """A Conv2d (im2col) with a :class:`BinaryKernel` weight."""


def binary_layer(layer: nn.Module, packed: dict) -> nn.Module | None:
    """The runtime module of a Linear / Conv2d whose weight is a ``binary`` packed value, or None."""
    return kernel_module(layer, BinaryKernel.from_packed(packed), BinaryWeightLinear, BinaryWeightConv2d)
