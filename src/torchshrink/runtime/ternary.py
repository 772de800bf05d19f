"""Ternary layers (Trained Ternary Quantization, Zhu et al. 2017) run without a multiplication per weight.

:class:`TernaryKernel` holds a ``{+Wp, 0, -Wn}`` weight as one uint8 pattern code per
group of 5 inputs and row (``c = Σ_k c_k 3^k < 243``, ``c_k``: 0 zero, 1 positive,
2 negative; 1.6 bits per weight in memory) for batches, and on AVX-512 CPUs also as two
bit planes (positive, negative: 2 bits per weight) for batch 1, and the two scales. :func:`ternary_matmul` computes
``y[o] = Wp · Σ_{P_o} x - Wn · Σ_{N_o} x`` by the table lookups of
:mod:`torchshrink.runtime._lut_kernels`: additions of activations, the two scales applied
once per input. :func:`reference_ternary_matmul` is its plain twin (decode, ``F.linear``).
:class:`TernaryLinear` / :class:`TernaryConv2d` are the runtime modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from . import _lut_kernels as kern
from ._common import MatrixShape, frozen, input_matrix, output_tensor, run_kernel
from .modules import CompressedConv2d, CompressedLinear, im2col_ok

_OWNER = "TernaryKernel"
_POW = 3 ** np.arange(kern.TRIT_WIDTH, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class TernaryKernel(MatrixShape):
    """A ternary ``out x in`` matrix: ``codes_t`` (ceil(in/5), out) uint8 base-3 patterns, ``scales`` [Wp, Wn]."""

    shape: tuple[int, int]
    codes_t: np.ndarray
    scales: np.ndarray
    words: np.ndarray | None = None

    @classmethod
    def from_codes(cls, codes: np.ndarray, scales: np.ndarray) -> TernaryKernel:
        """From an ``out x in`` array of codes in {0, 1, 2} (0 zero, 1 +Wp, 2 -Wn) and ``[Wp, Wn]``."""
        c = np.asarray(codes)
        if c.ndim != 2 or 0 in c.shape or c.dtype.kind not in "ui" or (c.size and int(c.max()) > 2):
            raise ModelError(f"{_OWNER}: codes must be a non-empty 2-D integer array of values in {{0, 1, 2}}. "
                             f"Got shape {c.shape} and dtype {c.dtype}.")
        s = np.asarray(scales, np.float32).reshape(-1)
        if s.size != 2 or not np.isfinite(s).all():
            raise ModelError(f"{_OWNER}: scales must be two finite values [Wp, Wn]. Got {s}.")
        out, n = c.shape
        g = -(-n // kern.TRIT_WIDTH)
        padded = np.zeros((out, g * kern.TRIT_WIDTH), np.uint8)
        padded[:, :n] = c
        patterns = (padded.reshape(out, g, kern.TRIT_WIDTH).astype(np.int64) @ _POW).astype(np.uint8)
        words = frozen(kern.bit_planes(c == 1, c == 2)) if kern.HAS_PERMVAR else None
        return cls((int(out), int(n)), frozen(patterns.T), frozen(s), words)

    @classmethod
    def from_packed(cls, packed: dict) -> TernaryKernel:
        """The kernel layout of a ``ternary`` packed value (any weight of 2+ dimensions, seen as out x rest)."""
        shape = [int(d) for d in packed["shape"]]
        if len(shape) < 2:
            raise ModelError(f"{_OWNER}: a ternary weight needs 2 or more dimensions. Got shape {shape}.")
        codes = np.asarray(packed["codes"]).reshape(shape[0], -1)
        return cls.from_codes(codes, packed["scales"])

    @property
    def weight_bytes(self) -> int:
        """Bytes of weight data a call reads (1.6 bits per weight plus the scales)."""
        return self.codes_t.nbytes + self.scales.nbytes

    def codes(self) -> np.ndarray:
        """The ``out x in`` codes (0 zero, 1 positive, 2 negative)."""
        p = self.codes_t.T.astype(np.int64)
        trits = (p[:, :, None] // _POW[None, None, :]) % 3
        return trits.reshape(self.out_features, -1)[:, : self.in_features].astype(np.uint8)

    def to_dense(self) -> np.ndarray:
        """Decode to the dense float32 ``out x in`` matrix (for references and export)."""
        return np.array([0.0, self.scales[0], -self.scales[1]], np.float32)[self.codes()]

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T + bias`` (:func:`ternary_matmul`)."""
        return ternary_matmul(x, self, bias)

    def __repr__(self) -> str:
        wp, wn = (float(v) for v in self.scales)
        return f"TernaryKernel(shape={self.shape}, wp={wp:.4g}, wn={wn:.4g}, nbytes={self.weight_bytes})"


def lut_call(kind: int, x: torch.Tensor, shape: tuple[int, int], codes_t: np.ndarray, scales: np.ndarray,
             bias: torch.Tensor | None, owner: str, words: np.ndarray | None = None) -> torch.Tensor:
    """Run the batch-1 or the batched table-lookup kernel of ``kind`` on ``x`` (``(*, in)``).

    ``words``: the bit planes of :func:`~._lut_kernels.perm_matvec`, which runs batch 1
    where the CPU has AVX-512 (None elsewhere: :func:`~._lut_kernels.lut_matvec`).
    """
    xm, lead, dtype = input_matrix(x, shape[1], shape, owner)
    y = np.empty((xm.shape[0], shape[0]), np.float32)
    work = codes_t.size * xm.shape[0]
    if xm.shape[0] == 1 and words is not None:
        run_kernel(kern.perm_matvec, work, xm[0], words, scales, kind, y[0])
    elif xm.shape[0] == 1:
        run_kernel(kern.lut_matvec, work, xm[0], codes_t, scales, kind, y[0])
    elif xm.shape[0] > 1:
        run_kernel(kern.lut_matmul, work, xm, codes_t, scales, kind, y)
    return output_tensor(y, lead, dtype, bias, owner)


def ternary_matmul(x: torch.Tensor, w: TernaryKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` a :class:`TernaryKernel`, by sums of activations (no decode)."""
    return lut_call(kern.TERNARY, x, w.shape, w.codes_t, w.scales, bias, "ternary_matmul", w.words)


def reference_ternary_matmul(x: torch.Tensor, w: TernaryKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch twin of :func:`ternary_matmul`: decode to dense, then ``F.linear``."""
    xm, lead, dtype = input_matrix(x, w.in_features, w.shape, "reference_ternary_matmul")
    y = F.linear(torch.from_numpy(xm), torch.from_numpy(w.to_dense()))
    return output_tensor(y.numpy(), lead, dtype, bias, "reference_ternary_matmul")


class TernaryLinear(CompressedLinear):
    """A Linear layer with a :class:`TernaryKernel` weight."""


class TernaryConv2d(CompressedConv2d):
    """A Conv2d (im2col) with a :class:`TernaryKernel` weight."""


def kernel_module(layer: nn.Module, weight: Any, linear: type, conv: type) -> nn.Module | None:
    """``linear(weight, bias)`` / ``conv(layer, weight, bias)`` for a Linear / Conv2d, else None.

    Every size gets its runtime module: the measured dispatch (:mod:`.dispatch`) then runs
    the kernel or the decoded dense twin per layer and input shape, whichever is faster here.
    """
    if isinstance(layer, nn.Linear):
        return linear(weight, layer.bias)
    if isinstance(layer, nn.Conv2d) and im2col_ok(layer):
        return conv(layer, weight, layer.bias)
    return None


def ternary_layer(layer: nn.Module, packed: dict) -> nn.Module | None:
    """The runtime module of a Linear / Conv2d whose weight is a ``ternary`` packed value, or None."""
    return kernel_module(layer, TernaryKernel.from_packed(packed), TernaryLinear, TernaryConv2d)
