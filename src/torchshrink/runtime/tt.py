"""Tensor-Train layers at inference: the cores contracted with the input (Novikov et al. 2015 §4).

:class:`TTKernel` runs :func:`torchshrink.factorize.tt.tt_contract` on cores prepared once
at load: consecutive cores are merged (:func:`~torchshrink.factorize.tt.tt_merge`) by the
grouping with the fewest multiply-adds (:func:`~torchshrink.factorize.tt.tt_plan`), and
each core is a contiguous float32 array whose ``(r m) x (n r)`` matrix view is what the
contraction multiplies by, so every step is one BLAS product on contiguous views and no
step copies a transposed state. For a 4096 x 4096 TT-matrix of modes ``8^4`` at rank 8
the plan merges the cores in pairs: two products, ``268M`` multiply-adds at batch 64
against ``1074M`` for the dense layer (``302M`` core by core).

The contraction is not faster everywhere (small layers, large ranks: peers' users report
TT layers slower than dense). The choice between it and the rebuilt dense weight is made
per layer and per input shape by the runtime's measured dispatch
(:mod:`torchshrink.runtime.dispatch`), which keeps the decoded dense twin beside the
kernel and times both paths by one protocol for every compressed layer. The kernel itself
keeps only the (merged) cores: :meth:`TTKernel.to_dense` rebuilds ``W`` when asked and
does not keep it.

Both paths are plain torch ops (BLAS matrix products); no numba kernel is needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..factorize.tt import tt_contract, tt_flops, tt_merge, tt_plan, tt_to_dense
from ._common import input_matrix, output_tensor

_OWNER = "TTKernel"


class TTKernel:
    """A TT-matrix ``W`` (``out x in``) applied by contracting its cores with the input.

    Attributes:
        cores: the float32 TT cores ``(r_{k-1}, m_k, n_k, r_k)`` as stored.
        groups: how many consecutive cores each merged core holds (:func:`tt_plan`, or given).
        merged: the float32 cores the contraction runs (``tt_merge(cores, groups)``).
    """

    def __init__(self, cores: Sequence[Any], groups: Sequence[int] | None = None) -> None:
        self.cores = [torch.as_tensor(np.ascontiguousarray(c, dtype=np.float32)) for c in cores]
        if not self.cores or any(c.dim() != 4 for c in self.cores):
            raise ModelError(f"{_OWNER}: cores must be a non-empty list of 4-D arrays.")
        self.out_modes = [int(c.shape[1]) for c in self.cores]
        self.in_modes = [int(c.shape[2]) for c in self.cores]
        self.ranks = [int(c.shape[0]) for c in self.cores] + [int(self.cores[-1].shape[3])]
        self.out_features, self.in_features = math.prod(self.out_modes), math.prod(self.in_modes)
        self.groups = tt_plan(self.out_modes, self.in_modes, self.ranks) if groups is None else [int(g) for g in groups]
        self.merged = tt_merge(self.cores, self.groups)

    @classmethod
    def from_packed(cls, packed: Mapping[str, Any]) -> TTKernel:
        from ..forms.tt import check_cores

        _, cores = check_cores(packed)
        return cls(cores)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def weight_bytes(self) -> int:
        """Bytes the contraction reads: the merged cores (float32)."""
        return sum(c.numel() * 4 for c in self.merged)

    def flops(self, batch: int = 1) -> int:
        """Multiply-adds of one contraction at this batch size (the dense layer: ``batch·out·in``)."""
        at, bounds = 0, [0]
        for g in self.groups:
            at += g
            bounds.append(at)
        return tt_flops([int(c.shape[1]) for c in self.merged], [int(c.shape[2]) for c in self.merged],
                        [self.ranks[a] for a in bounds], batch)

    def to_dense(self) -> np.ndarray:
        """``W`` rebuilt from the cores (exact float64 products; built on each call, never kept)."""
        return tt_to_dense(self.cores, exact=True).numpy()

    @torch.no_grad()
    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T + bias`` by core contraction."""
        xm, lead, dtype = input_matrix(x, self.in_features, self.shape, "tt_matmul")
        xt = torch.from_numpy(xm)
        y = tt_contract(xt, self.merged) if xt.shape[0] else torch.zeros(0, self.out_features)
        return output_tensor(y.numpy(), lead, dtype, bias, "tt_matmul")

    def __repr__(self) -> str:
        return (f"TTKernel(shape={self.shape}, out_modes={self.out_modes}, in_modes={self.in_modes}, "
                f"ranks={self.ranks[1:-1]}, groups={self.groups})")


def reference_tt_matmul(x: torch.Tensor, w: TTKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch twin: rebuild ``W`` (``tt_to_dense``), then ``F.linear``."""
    xm, lead, dtype = input_matrix(x, w.in_features, w.shape, "reference_tt_matmul")
    y = F.linear(torch.from_numpy(xm), tt_to_dense(w.cores, exact=True))
    return output_tensor(y.numpy(), lead, dtype, bias, "reference_tt_matmul")
