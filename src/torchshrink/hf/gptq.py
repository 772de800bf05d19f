"""Response-aware quantization of one weight matrix onto a per-row grid (GPTQ), and its plain twin.

For a linear layer ``y = W x`` with calibration inputs ``X`` (one row per token), GPTQ
(Frantar et al. 2023, Alg. 1; Optimal Brain Surgeon, Hassibi & Stork 1993) minimizes the
response error ``||W Xᵀ − Ŵ Xᵀ||²`` = tr((W − Ŵ) H (W − Ŵ)ᵀ) with ``H = XᵀX``: columns are
quantized one at a time (largest ``H_ii`` first, "act order"), and each column's
rounding error ``e`` is pushed onto the columns not yet quantized through the
upper Cholesky factor ``U`` of ``H⁻¹``: ``W[:, j:] −= e · U[i, j:] / U[i, i]``.
The grid is per output row (``scale``, ``offset``: see :mod:`torchshrink.forms.rowgrid`),
its clipping chosen per row to minimize the H-weighted error of plain rounding
(GPTQ's "mse" grid search). :func:`round_to_grid` is the plain (response-blind) twin:
the same grid, each weight rounded to its nearest level.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.transform import WeightTransform
from ..forms.rowgrid import grid_weight

#: Clipping factors tried for each row's grid (1.0 = the row's min..max).
CLIP_GRID = tuple(1.0 - 0.05 * i for i in range(9))
#: Damping added to H's diagonal, as a fraction of its mean diagonal (GPTQ: 1 %).
DAMPING = 0.01
BLOCK = 128


def _fp16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float16).to(torch.float32)


def grid(w: torch.Tensor, bits: int, weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (scale, offset), float16-exact, whose plain rounding has the least weighted error.

    ``weights`` (per column, e.g. ``diag H``) weigh the squared error; None: plain MSE.
    """
    levels = (1 << bits) - 1
    lo, hi = w.min(dim=1).values, w.max(dim=1).values
    mid = (lo + hi) / 2
    cw = torch.ones(w.shape[1], dtype=w.dtype) if weights is None else weights.to(w.dtype)
    best_err = torch.full((w.shape[0],), float("inf"), dtype=w.dtype)
    best_s, best_o = torch.zeros_like(lo), torch.zeros_like(lo)
    for p in CLIP_GRID:
        a, b = mid + (lo - mid) * p, mid + (hi - mid) * p
        s = _fp16(torch.clamp((b - a) / levels, min=2.0 ** -24))
        o = _fp16(a)
        q = torch.clamp(torch.round((w - o[:, None]) / s[:, None]), 0, levels)
        err = (((o[:, None] + s[:, None] * q) - w) ** 2 * cw).sum(dim=1)
        better = err < best_err
        best_err, best_s, best_o = torch.where(better, err, best_err), torch.where(better, s, best_s), \
            torch.where(better, o, best_o)
    return best_s, best_o


def _codes(w: torch.Tensor, s: torch.Tensor, o: torch.Tensor, levels: int) -> torch.Tensor:
    return torch.clamp(torch.round((w - o) / s), 0, levels)


def packed_grid(shape: tuple[int, int], bits: int, s: torch.Tensor, o: torch.Tensor, q: torch.Tensor) -> dict:
    """The ``rowgrid`` packed value of codes ``q`` on the grid (``s``, ``o``)."""
    dtype = np.uint8 if bits <= 8 else np.uint16
    return {"form": "rowgrid", "shape": list(shape), "bits": int(bits),
            "scale": s.numpy().astype(np.float16), "offset": o.numpy().astype(np.float16),
            "indices": q.numpy().astype(dtype)}


def round_to_grid(w: torch.Tensor, bits: int) -> dict:
    """Plain per-row quantization: the MSE-best clipped grid, every weight rounded to its nearest level."""
    w = w.detach().to(torch.float32)
    s, o = grid(w, bits)
    q = _codes(w, s[:, None], o[:, None], (1 << bits) - 1)
    return packed_grid(tuple(w.shape), bits, s, o, q)


def gptq(w: torch.Tensor, hessian: torch.Tensor, bits: int, damping: float = DAMPING) -> dict:
    """GPTQ onto a per-row grid: the ``rowgrid`` packed value minimizing ``tr(ΔW H ΔWᵀ)``.

    ``hessian`` is ``XᵀX`` (any positive scale) of the layer's calibration inputs.
    """
    w = w.detach().to(torch.float64).clone()
    h = hessian.detach().to(torch.float64).clone()
    rows, cols = w.shape
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    s, o = grid(w.to(torch.float32), bits, torch.diagonal(h).to(torch.float32))
    s64, o64 = s.to(torch.float64)[:, None], o.to(torch.float64)[:, None]
    levels = (1 << bits) - 1
    perm = torch.argsort(torch.diagonal(h), descending=True)
    w, h = w[:, perm], h[perm][:, perm]
    h += damping * torch.diagonal(h).mean() * torch.eye(cols, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.zeros_like(w)
    for i1 in range(0, cols, BLOCK):
        i2 = min(i1 + BLOCK, cols)
        wb, ub = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        errs = torch.zeros_like(wb)
        for j in range(i2 - i1):
            col = wb[:, j:j + 1]
            qc = _codes(col, s64, o64, levels)
            q[:, i1 + j:i1 + j + 1] = qc
            e = (col - (o64 + s64 * qc)) / ub[j, j]
            wb[:, j:] -= e * ub[j:j + 1, j:]
            errs[:, j:j + 1] = e
        w[:, i2:] -= errs @ u[i1:i2, i2:]
    codes = torch.empty_like(q)
    codes[:, perm] = q
    return packed_grid((rows, cols), bits, s, o, codes)


def decoded(packed: dict) -> torch.Tensor:
    """The float32 weight of a ``rowgrid`` packed value (the form's own decode)."""
    return torch.from_numpy(grid_weight(packed["scale"], packed["offset"], packed["indices"]))


def response_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr((W − Ŵ) H (W − Ŵ)ᵀ)``: the summed squared response error on the inputs behind ``H``."""
    d = (w.detach().to(torch.float64) - w_hat.to(torch.float64))
    return float(torch.einsum("ij,jk,ik->", d, hessian.to(torch.float64), d))


class GridWeight(WeightTransform):
    """A layer's weight replaced by a ``rowgrid`` packed value (the decoded weight, and ``pack``)."""

    def __init__(self, packed: dict) -> None:
        super().__init__()
        self.packed = packed
        self.register_buffer("decoded", decoded(packed), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.decoded.to(w.dtype)

    def pack(self, w_in: torch.Tensor) -> dict:
        return dict(self.packed)
