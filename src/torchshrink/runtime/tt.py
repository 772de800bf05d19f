"""Tensor-Train layers at inference: contract the cores, or use the rebuilt weight,
whichever this machine runs faster (Novikov et al. 2015 §4).

Contracting the cores with the input (:func:`torchshrink.factorize.tt.tt_contract`,
Novikov Eq. 5) costs ``Σ_k B (Π_{l<k} n_l) r_{k-1} m_k n_k r_k (Π_{l>k} m_l)``
multiply-adds, often far below the dense ``B M N``, but it runs as ``d`` small batched
products and can be slower than one dense product for small layers, small batches or
large ranks (peers' users report TT layers slower than dense). :class:`TTKernel` keeps
both paths: on the first call at a batch size (bucketed by powers of two) it times each
path a few times on that very input and keeps the faster one for the bucket, so a layer
is never run by the slower path. The reconstructed weight (``tt_to_dense``, float32) is
built once, on the first call that needs it.

Both paths are plain torch ops (BLAS matrix products); no numba kernel is needed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from ..factorize.tt import tt_contract, tt_to_dense
from ._common import input_matrix, output_tensor

_OWNER = "TTKernel"
PATHS = ("contract", "dense")
#: timed calls of each path when a batch bucket is first seen
TRIALS = 3


class TTKernel:
    """A TT-matrix ``W`` (``out x in``) run by core contraction or by its rebuilt dense weight.

    Attributes:
        cores: float32 tensors ``(r_{k-1}, m_k, n_k, r_k)``.
        path: ``None`` (choose by measured time, per batch bucket) or a forced path in
            :data:`PATHS`.
        choices: batch bucket -> the path measured faster (filled as buckets are seen).
    """

    def __init__(self, cores: Sequence[Any], path: str | None = None) -> None:
        if path is not None and path not in PATHS:
            raise ModelError(f"{_OWNER}: path must be one of {list(PATHS)} or None. Got {path!r}.")
        self.cores = [torch.as_tensor(np.ascontiguousarray(c, dtype=np.float32)) for c in cores]
        if not self.cores or any(c.dim() != 4 for c in self.cores):
            raise ModelError(f"{_OWNER}: cores must be a non-empty list of 4-D arrays.")
        self.out_features = math.prod(int(c.shape[1]) for c in self.cores)
        self.in_features = math.prod(int(c.shape[2]) for c in self.cores)
        self.path = path
        self.choices: dict[int, str] = {}
        self._dense: torch.Tensor | None = None

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
        """Bytes of the cores (the contraction path reads these; the dense path reads ``4·out·in``)."""
        return sum(c.numel() * 4 for c in self.cores)

    def dense(self) -> torch.Tensor:
        if self._dense is None:
            self._dense = tt_to_dense(self.cores, exact=True)
        return self._dense

    def to_dense(self) -> np.ndarray:
        return self.dense().numpy()

    def _run(self, path: str, x: torch.Tensor) -> torch.Tensor:
        return tt_contract(x, self.cores) if path == "contract" else F.linear(x, self.dense())

    def choose(self, x: torch.Tensor) -> str:
        """The path for ``x``'s batch size: forced, already measured for its bucket, or measured now."""
        if self.path is not None:
            return self.path
        bucket = max(1, x.shape[0]).bit_length()
        if bucket not in self.choices:
            best = {}
            for p in PATHS:
                self._run(p, x)  # warm-up (and builds the dense weight once)
                t0 = time.perf_counter()
                for _ in range(TRIALS):
                    self._run(p, x)
                best[p] = time.perf_counter() - t0
            self.choices[bucket] = min(best, key=best.get)
        return self.choices[bucket]

    @torch.no_grad()
    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x @ W.T + bias`` by the path chosen for this batch size."""
        xm, lead, dtype = input_matrix(x, self.in_features, self.shape, "tt_matmul")
        xt = torch.from_numpy(xm)
        y = self._run(self.choose(xt), xt) if xt.shape[0] else torch.zeros(0, self.out_features)
        return output_tensor(y.numpy(), lead, dtype, bias, "tt_matmul")

    def __repr__(self) -> str:
        ranks = [int(c.shape[3]) for c in self.cores[:-1]]
        return (f"TTKernel(shape={self.shape}, out_modes={[int(c.shape[1]) for c in self.cores]}, "
                f"in_modes={[int(c.shape[2]) for c in self.cores]}, ranks={ranks}, path={self.path}, "
                f"choices={self.choices})")


def reference_tt_matmul(x: torch.Tensor, w: TTKernel, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-PyTorch twin: rebuild ``W`` (``tt_to_dense``), then ``F.linear``."""
    xm, lead, dtype = input_matrix(x, w.in_features, w.shape, "reference_tt_matmul")
    y = F.linear(torch.from_numpy(xm), tt_to_dense(w.cores, exact=True))
    return output_tensor(y.numpy(), lead, dtype, bias, "reference_tt_matmul")
