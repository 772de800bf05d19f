"""Quantized CNN (Wu et al., "Quantized Convolutional Neural Networks for Mobile Devices",
CVPR 2016): product quantization learned on the layer's *response*, with error correction.

**Layout** (Wu §3.1-3.2). FC weights ``[out, D]`` are cut along the input dimension into
``S = D/d`` sub-spaces, as in :mod:`torchshrink.quantize.product` (``layout="rows"``).
A conv weight ``[out, C, kh, kw]`` is cut into sub-vectors over the input channels at each
kernel position (``layout="channels"``): the weight is viewed as ``[out, kh, kw, C]`` and
flattened, so sub-space ``s = (p, g)`` holds channels ``g d .. (g+1) d - 1`` at kernel
position ``p`` (``d`` must divide ``C``). Each sub-space has ``K`` codewords; every
(output, sub-space) pair stores the index of its codeword. Stored in the ``pq`` form
(:mod:`torchshrink.forms.pq`, with its ``layout`` param).

**Response error** (Wu §3.1, Eq. 3). With ``X`` the layer's inputs (im2col rows for a
conv) on calibration samples from the training split, the codebooks and codes minimize
``||Y - X Ŵᵀ||²_F`` with ``Y = X_ref Wᵀ`` the original layer's response, instead of the
weight error ``||W - Ŵ||²``. Only the moments ``Σ = Xᵀ X`` and ``P = Xᵀ Y`` are needed
(float64). Block coordinate descent over the sub-spaces (Gauss-Seidel): for sub-space
``s`` (columns ``J``), with the others fixed, the objective is
``Σ_o (ŵ_o - t_o)ᵀ Σ_JJ (ŵ_o - t_o) + const`` where
``T = Σ_JJ⁻¹ (P_J - (Σ Ŵᵀ)_J + Σ_JJ Ŵ_Jᵀ)``; with the Cholesky factor ``Σ_JJ = L Lᵀ`` this is
Euclidean k-means of ``z_o = Lᵀ t_o`` (warm-started from the current codewords and
codes), mapped back by ``c = L⁻ᵀ u``. Every step lowers the objective; the start is the
weight-error PQ, so the response error never exceeds it on the calibration set.

**Error correction** (Wu §3.3). Layers are quantized in order; layer ``l`` is fitted on
inputs ``X`` that passed through the *already quantized* layers ``< l`` while its target
stays the original network's response, ``Y = X_ref Wᵀ`` (then ``P = Xᵀ X_ref Wᵀ``), so each
layer also corrects the error accumulated before it. (The authors' released code has no
error correction.) Calibration inputs come from the training split only.

``half_codebooks`` rounds the learned codewords to float16 values (the ``pq`` form then
stores them in 16 bits, still exactly).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.params import Interval, OneOf, check
from ..core.select import per_layer, select_layers
from ..core.technique import LayerStage, Step, Technique
from ..core.transform import attach, original, packer
from ..errors import ModelError
from .product import CODEWORDS, MAX_CODEWORDS, SUBVECTOR, ProductQuantized, check_weight, kmeans_subspaces

LAYOUTS = ("rows", "channels")
OBJECTIVE = OneOf(("weight", "response"))
PASSES = Interval(int, 0, 1000)
SAMPLES = Interval(int, 1, 1 << 24)
#: im2col rows kept per layer (a random subset beyond this)
MAX_ROWS = 65536


def channel_order(shape: Sequence[int]) -> np.ndarray:
    """``order[j]``: the standard (``C, kh, kw``) column of column ``j`` in the ``channels`` layout (``kh, kw, C``)."""
    _, c, kh, kw = (int(s) for s in shape)
    return np.arange(c * kh * kw).reshape(c, kh * kw).T.reshape(-1)


class QCNNQuantized(ProductQuantized):
    """:class:`ProductQuantized` in Q-CNN's layout: ``rows`` (FC, or any weight) or
    ``channels`` (conv: sub-vectors over input channels at each kernel position)."""

    def __init__(self, codebooks: torch.Tensor, codes: torch.Tensor, shape: Sequence[int],
                 layout: str = "rows") -> None:
        shape = tuple(int(s) for s in shape)
        if layout not in LAYOUTS or (layout == "channels" and len(shape) != 4):
            raise ModelError(f"layout must be one of {list(LAYOUTS)} ('channels' for 4-d conv weights). Got {layout!r}.")
        self.layout = layout
        super().__init__(codebooks, codes, shape)
        if layout == "channels" and (self.pad or shape[1] % self.subvector):
            raise ModelError(f"layout 'channels' needs a subvector that divides the {shape[1]} input channels. "
                             f"Got {self.subvector}.")

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        rows = self.codebooks[torch.arange(self.codebooks.shape[0], device=self.codes.device), self.codes]
        if self.layout == "rows":
            return self._finish(rows, w)
        out, c, kh, kw = self.shape
        return rows.reshape(out, kh, kw, c).permute(0, 3, 1, 2).contiguous().to(w.dtype)

    @torch.no_grad()
    def pack(self, w_in: torch.Tensor) -> dict:
        packed = super().pack(w_in)
        if self.layout != "rows":
            packed["layout"] = self.layout
        return packed

    def extra_repr(self) -> str:
        return super().extra_repr() + f", layout={self.layout}"


# ---------------------------------------------------------------- calibration inputs
def _layer_inputs(model: nn.Module, layer: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """The inputs ``layer`` sees when ``model`` runs on ``x``: ``(rows, D)`` in the standard
    column order (a conv's im2col rows, ``(C, kh, kw)``), float64."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple, _out: Any) -> None:
        a = args[0].detach()
        if isinstance(layer, nn.Conv2d):
            a = F.unfold(a, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
            a = a.transpose(1, 2).reshape(-1, a.shape[1])
        seen.append(a.reshape(-1, a.shape[-1]).to(torch.float64))

    handle = layer.register_forward_hook(hook)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], batch):
                model(x[i:i + batch])
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(seen)


def _supported(name: str, layer: nn.Module) -> None:
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ModelError(f"qcnn supports convolutions with groups=1 and zero padding; {name!r} is not one")
    elif not isinstance(layer, nn.Linear):
        raise ModelError(f"qcnn quantizes nn.Linear and nn.Conv2d layers; {name!r} is {type(layer).__name__}")


# ---------------------------------------------------------------- response-error PQ
def _lloyd(z: torch.Tensor, u: torch.Tensor, codes: torch.Tensor, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Warm-started Lloyd iterations: points ``z`` (n, d), codewords ``u`` (K, d), codes (n,)."""
    k = u.shape[0]
    for _ in range(iters):
        new = torch.cdist(z, u).argmin(1)
        sums = torch.zeros_like(u).index_add_(0, new, z)
        counts = torch.bincount(new, minlength=k).to(z.dtype).unsqueeze(1)
        u = torch.where(counts > 0, sums / counts.clamp_min(1), u)
        if torch.equal(new, codes):
            break
        codes = new
    return u, torch.cdist(z, u).argmin(1)


def response_pq(weight2d: torch.Tensor, sigma: torch.Tensor, cross: torch.Tensor, codebooks: torch.Tensor,
                codes: torch.Tensor, *, passes: int = 4, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimize ``||Y - X Ŵᵀ||²`` (``Σ = XᵀX``, ``P = cross Wᵀ`` with ``cross = Xᵀ X_ref``) over PQ
    codebooks ``[S, K, d]`` and codes ``[out, S]`` (the layout's column order, no padding),
    by Gauss-Seidel passes over the sub-spaces (see the module docstring)."""
    S, K, d = codebooks.shape
    w = weight2d.to(torch.float64)
    p = cross @ w.T                                  # (D, out)
    cb = codebooks.to(torch.float64).clone()
    codes = codes.clone()
    w_hat = cb[torch.arange(S).unsqueeze(0), codes].reshape(w.shape[0], S * d)
    m = sigma @ w_hat.T                              # Σ Ŵᵀ, (D, out), kept up to date
    ridge = 1e-9 * float(torch.diagonal(sigma).mean()) + 1e-12
    eye = torch.eye(d, dtype=torch.float64)
    for _ in range(passes):
        for s in range(S):
            j = slice(s * d, (s + 1) * d)
            a = sigma[j, j] + ridge * eye
            old = w_hat[:, j]
            b = p[j] - m[j] + sigma[j, j] @ old.T     # (d, out)
            chol = torch.linalg.cholesky(a)
            t = torch.cholesky_solve(b, chol)         # Σ_JJ⁻¹ b
            z = (chol.T @ t).T                        # (out, d): points in the whitened space
            u, new_codes = _lloyd(z, cb[s] @ chol, codes[:, s], iters)
            cb[s] = torch.linalg.solve_triangular(chol.T, u.T, upper=True).T
            codes[:, s] = new_codes
            new = cb[s][new_codes]
            m += sigma[:, j] @ (new - old).T
            w_hat[:, j] = new
    return cb.to(torch.float32), codes


def qcnn_quantize(model: nn.Module, calibration: torch.Tensor, subvector: int | Mapping[str, int] = 4,
                  codewords: int | Mapping[str, int] = 256, *, objective: str = "response",
                  error_correction: bool = True, conv_layout: str = "channels", passes: int = 4, iters: int = 20,
                  half_codebooks: bool = False, layers: Sequence[str] | str | None = None,
                  exclude: Sequence[str] | str | None = None, seed: int = 0) -> nn.Module:
    """Quantize the selected Linear / Conv2d layers in place, in model order (Q-CNN).

    Args:
        calibration: model inputs from the training split (never the test split).
        subvector / codewords: ``d`` and ``K`` (one int or ``{pattern: int}``; K capped at ``out``).
        objective: ``"weight"`` (k-means of the weight's sub-vectors) or ``"response"`` (Eq. 3).
        error_correction: fit layer ``l`` on inputs through the quantized layers ``< l`` (§3.3).
        conv_layout: ``"channels"`` (Q-CNN) or ``"rows"`` (sub-vectors of the flattened kernel).
        passes: Gauss-Seidel sweeps over the sub-spaces; iters: Lloyd iterations per visit.
    """
    objective = check(objective, "objective", "qcnn_quantize", OBJECTIVE)
    conv_layout = check(conv_layout, "conv_layout", "qcnn_quantize", OneOf(LAYOUTS))
    passes = check(passes, "passes", "qcnn_quantize", PASSES)
    if not isinstance(calibration, torch.Tensor) or calibration.shape[0] == 0:
        raise ModelError("qcnn_quantize needs a non-empty tensor of calibration inputs from the training split.")
    chosen = select_layers(model, layers, exclude)
    names = [n for n, _ in chosen]
    ds = per_layer(subvector, names, "subvector", lambda v, k: check(v, k, "qcnn", SUBVECTOR))
    ks = per_layer(codewords, names, "codewords", lambda v, k: check(v, k, "qcnn", CODEWORDS))
    for name, layer in chosen:
        _supported(name, layer)
        if packer(layer) is not None:
            raise ModelError(f"layer {name!r} is already quantized; build the model again to quantize it differently")
        check_weight(layer.weight, name)
        if name in ds and isinstance(layer, nn.Conv2d) and conv_layout == "channels" and \
                layer.in_channels % min(ds[name], layer.in_channels):
            raise ModelError(f"qcnn: subvector {ds[name]} of layer {name!r} must divide its {layer.in_channels} "
                             "input channels (layout 'channels'); choose a divisor or conv_layout: rows")
    reference = copy.deepcopy(model).eval()
    ref_layers = dict(reference.named_modules())
    gen = torch.Generator().manual_seed(seed)
    x = calibration.detach()
    for name, layer in chosen:
        if name not in ds:
            continue
        w = layer.weight.detach()
        layout = "channels" if isinstance(layer, nn.Conv2d) and conv_layout == "channels" else "rows"
        out = w.shape[0]
        w2 = w.reshape(out, -1)
        order = torch.from_numpy(channel_order(w.shape)) if layout == "channels" else None
        if order is not None:
            w2 = w2[:, order]
        d = min(ds[name], layer.in_channels if layout == "channels" else w2.shape[1])
        pad = -w2.shape[1] % d
        k = min(ks[name], out)
        w2p = F.pad(w2, (0, pad)) if pad else w2
        cb, codes = kmeans_subspaces(w2p.reshape(out, -1, d).transpose(0, 1), k, iters, seed)
        if objective == "response":
            x_ref = _layer_inputs(reference, ref_layers[name], x)
            x_q = _layer_inputs(model, layer, x) if error_correction else x_ref
            if x_ref.shape[0] > MAX_ROWS:
                keep = torch.randperm(x_ref.shape[0], generator=gen)[:MAX_ROWS]
                x_ref, x_q = x_ref[keep], x_q[keep]
            if order is not None:
                x_ref, x_q = x_ref[:, order], x_q[:, order]
            if pad:
                x_ref, x_q = F.pad(x_ref, (0, pad)), F.pad(x_q, (0, pad))
            sigma, cross = x_q.T @ x_q, x_q.T @ x_ref
            cb, codes = response_pq(w2p.double(), sigma, cross, cb, codes, passes=passes, iters=iters)
        if half_codebooks:
            cb = cb.half().float()
        attach(layer, QCNNQuantized(cb.to(w.device), codes.to(w.device), w.shape, layout))
        original(layer).requires_grad_(False)
    return model


# ---------------------------------------------------------------- the recipe stage
class QCNNSpec(LayerStage):
    """Wu et al. 2016 Q-CNN: PQ along the input dimension, learned on layer responses with error correction."""

    technique: Literal["qcnn"]
    subvector: int | dict[str, int] = Field(4, description="sub-vector length d (conv: input channels per sub-vector)")
    codewords: int | dict[str, int] = Field(
        64, description=f"codewords K per sub-space (2..{MAX_CODEWORDS}, capped at the layer's outputs)")
    objective: Literal["weight", "response"] = Field("response", description="weight: ||W - Ŵ||²; response: ||WX - ŴX||²")
    error_correction: bool = Field(True, description="quantize layer l on inputs through the quantized layers < l")
    conv_layout: Literal["channels", "rows"] = Field("channels", description="conv sub-vectors over input channels "
                                                     "at each kernel position (Q-CNN), or along the flattened kernel")
    calibration: int = SAMPLES.field(1000, description="training samples whose layer inputs are fitted")
    passes: int = PASSES.field(4, description="sweeps over the sub-spaces")
    iters: int = Interval(int, 1, 1000).field(20, description="Lloyd iterations (k-means start, and per sub-space visit)")
    half_codebooks: bool = Field(False, description="round codewords to float16 values (stored in 16 bits, exactly)")


def calibration_inputs(data: Any, n: int, seed: int) -> torch.Tensor:
    """``n`` random inputs of the training split (all of it when smaller)."""
    x = data.train.tensors[0]
    gen = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=gen)[:n]]


def _apply(ctx: Any, spec: QCNNSpec, finetune: Any) -> Step:
    qcnn_quantize(ctx.model, calibration_inputs(ctx.data, spec.calibration, ctx.seed), spec.subvector,
                  spec.codewords, objective=spec.objective, error_correction=spec.error_correction,
                  conv_layout=spec.conv_layout, passes=spec.passes, iters=spec.iters,
                  half_codebooks=spec.half_codebooks, layers=spec.layers, exclude=spec.exclude, seed=ctx.seed)
    return Step()


TECHNIQUE = Technique("qcnn", QCNNSpec, _apply)
