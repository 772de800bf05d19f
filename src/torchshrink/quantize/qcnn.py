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
weight error ``||W - Ŵ||²``. Block coordinate descent over the sub-spaces (Gauss-Seidel;
the sub-spaces stay coupled through the response, as in Wu's alternating updates with
the other sub-spaces' contribution held fixed): for sub-space
``s`` (columns ``J``), with the others fixed, the objective is
``Σ_o (ŵ_o - t_o)ᵀ Σ_JJ (ŵ_o - t_o) + const`` where
``T = Σ_JJ⁻¹ (P_J - (Σ Ŵᵀ)_J + Σ_JJ Ŵ_Jᵀ)``; with the Cholesky factor ``Σ_JJ = L Lᵀ`` this is
Euclidean k-means of ``z_o = Lᵀ t_o`` (warm-started from the current codewords and
codes), mapped back by ``c = L⁻ᵀ u``. Every step lowers the objective; the start is the
weight-error PQ, so the response error never exceeds it on the calibration set.

**Memory.** Each visit needs only ``Σ_JJ`` and the column block ``(P - Σ Ŵᵀ)_J``, which two
exact forms of the same statistics give (float64, :class:`Moments` and :class:`Residuals`):
the moments ``Σ = Xᵀ X`` (``D x D``) and ``P - Σ Ŵᵀ`` (``D x out``), or the inputs ``X``
(``rows x D``, float32, as the layer saw them) with the residual ``E = Y - X Ŵᵀ``
(``rows x out``), from which ``(P - Σ Ŵᵀ)_J = X_Jᵀ E``. The layer uses whichever is
smaller: moments when there are more calibration rows than inputs ``D`` (conv im2col
rows), residuals otherwise (a VGG FC layer, ``D = 25088``, would need 5 GB of moments and
needs 0.1 GB of inputs for 1000 samples). ``P`` is ``X_qᵀ (X_ref Wᵀ)``, never the
``D x D`` matrix ``X_qᵀ X_ref``. A layer whose statistics would exceed ``max_gib`` stops
with one clear error naming the layer, before anything that large is allocated.

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
    column order (a conv's im2col rows, ``(C, kh, kw)``), float32 as the layer saw them."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple, _out: Any) -> None:
        a = args[0].detach()
        if isinstance(layer, nn.Conv2d):
            a = F.unfold(a, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
            a = a.transpose(1, 2).reshape(-1, a.shape[1])
        seen.append(a.reshape(-1, a.shape[-1]).to(torch.float32))

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


#: rows per float64 block when moments are accumulated from float32 inputs
_CHUNK = 4096


class Moments:
    """The fit's statistics as ``Σ = X_qᵀ X_q`` (``D x D``) and ``R = P - Σ Ŵᵀ`` (``D x out``), float64."""

    def __init__(self, sigma: torch.Tensor, p: torch.Tensor) -> None:
        self.sigma, self.r = sigma.to(torch.float64), p.to(torch.float64).clone()

    @classmethod
    def of(cls, x_q: torch.Tensor, y: torch.Tensor) -> Moments:
        """From inputs ``x_q`` (rows x D) and target responses ``y`` (rows x out), in float64 blocks of rows."""
        d, out = x_q.shape[1], y.shape[1]
        sigma = torch.zeros(d, d, dtype=torch.float64)
        p = torch.zeros(d, out, dtype=torch.float64)
        for i in range(0, x_q.shape[0], _CHUNK):
            xb = x_q[i:i + _CHUNK].to(torch.float64)
            sigma += xb.T @ xb
            p += xb.T @ y[i:i + _CHUNK].to(torch.float64)
        return cls(sigma, p)

    def start(self, w_hat: torch.Tensor) -> None:
        self.r -= self.sigma @ w_hat.T

    def block(self, j: slice) -> torch.Tensor:
        return self.sigma[j, j]

    def residual(self, j: slice) -> torch.Tensor:
        return self.r[j]

    def update(self, j: slice, delta: torch.Tensor) -> None:
        self.r -= self.sigma[:, j] @ delta.T


class Residuals:
    """The same statistics as the inputs ``X_q`` (``rows x D``) and ``E = Y - X_q Ŵᵀ`` (``rows x out``):
    ``Σ_JJ = X_Jᵀ X_J`` and ``(P - Σ Ŵᵀ)_J = X_Jᵀ E``."""

    def __init__(self, x_q: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.e = x_q, y.to(torch.float64).clone()

    def start(self, w_hat: torch.Tensor) -> None:
        for i in range(0, self.x.shape[0], _CHUNK):
            self.e[i:i + _CHUNK] -= self.x[i:i + _CHUNK].to(torch.float64) @ w_hat.T

    def block(self, j: slice) -> torch.Tensor:
        xj = self.x[:, j].to(torch.float64)
        return xj.T @ xj

    def residual(self, j: slice) -> torch.Tensor:
        return self.x[:, j].to(torch.float64).T @ self.e

    def update(self, j: slice, delta: torch.Tensor) -> None:
        self.e -= self.x[:, j].to(torch.float64) @ delta.T


def statistics_bytes(rows: int, dim: int, out: int) -> dict[str, int]:
    """Bytes of each form of the fit's statistics for ``rows`` calibration rows of ``dim`` inputs."""
    return {"moments": 8 * dim * (dim + out), "residuals": 4 * rows * dim + 8 * rows * out}


def _check_memory(name: str, layer: nn.Module, x: torch.Tensor, dim: int, out: int, max_gib: float) -> None:
    """Refuse, before the inputs are gathered, a layer whose fit would need more than ``max_gib``."""
    rows = x.shape[0]
    if isinstance(layer, nn.Conv2d):
        hw = x.shape[-2:] if x.dim() == 4 else (1, 1)  # the model input's size bounds a later conv's output
        rows = min(MAX_ROWS, rows * int(hw[0]) * int(hw[1]))
    need = 8 * rows * dim + min(statistics_bytes(rows, dim, out).values())  # the two inputs, then the statistics
    if need > max_gib * 2**30:
        raise ModelError(f"qcnn: the response-error fit of layer {name!r} ({dim} inputs, {out} outputs, {rows} "
                         f"calibration rows) needs {need / 2**30:.1f} GiB, over max_gib={max_gib:g}; use fewer "
                         "calibration samples, objective: weight for this layer, or a larger max_gib")


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


def response_pq(weight2d: torch.Tensor, stats: Moments | Residuals, codebooks: torch.Tensor,
                codes: torch.Tensor, *, passes: int = 4, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimize ``||Y - X Ŵᵀ||²`` over PQ codebooks ``[S, K, d]`` and codes ``[out, S]`` (the
    layout's column order, no padding), by Gauss-Seidel passes over the sub-spaces (see the
    module docstring); ``stats`` holds ``X`` and ``Y`` as :class:`Moments` or :class:`Residuals`
    (updated in place)."""
    S, K, d = codebooks.shape
    w = weight2d.to(torch.float64)
    cb = codebooks.to(torch.float64).clone()
    codes = codes.clone()
    w_hat = cb[torch.arange(S).unsqueeze(0), codes].reshape(w.shape[0], S * d)
    stats.start(w_hat)
    blocks = [stats.block(slice(s * d, (s + 1) * d)) for s in range(S)]
    ridge = 1e-9 * float(sum(torch.diagonal(a).sum() for a in blocks)) / (S * d) + 1e-12
    eye = torch.eye(d, dtype=torch.float64)
    chols = [torch.linalg.cholesky(a + ridge * eye) for a in blocks]
    for _ in range(passes):
        for s in range(S):
            j = slice(s * d, (s + 1) * d)
            old = w_hat[:, j]
            chol = chols[s]
            b = stats.residual(j) + blocks[s] @ old.T  # (d, out)
            t = torch.cholesky_solve(b, chol)         # Σ_JJ⁻¹ b
            z = (chol.T @ t).T                        # (out, d): points in the whitened space
            u, new_codes = _lloyd(z, cb[s] @ chol, codes[:, s], iters)
            cb[s] = torch.linalg.solve_triangular(chol.T, u.T, upper=True).T
            codes[:, s] = new_codes
            new = cb[s][new_codes]
            stats.update(j, new - old)
            w_hat[:, j] = new
    return cb.to(torch.float32), codes


def qcnn_quantize(model: nn.Module, calibration: torch.Tensor, subvector: int | Mapping[str, int] = 4,
                  codewords: int | Mapping[str, int] = 256, *, objective: str = "response",
                  error_correction: bool = True, conv_layout: str = "channels", passes: int = 4, iters: int = 20,
                  half_codebooks: bool = False, max_gib: float = 4.0, layers: Sequence[str] | str | None = None,
                  exclude: Sequence[str] | str | None = None, seed: int = 0) -> nn.Module:
    """Quantize the selected Linear / Conv2d layers in place, in model order (Q-CNN).

    Args:
        calibration: model inputs from the training split (never the test split).
        subvector / codewords: ``d`` and ``K`` (one int or ``{pattern: int}``; K capped at ``out``).
        objective: ``"weight"`` (k-means of the weight's sub-vectors) or ``"response"`` (Eq. 3).
        error_correction: fit layer ``l`` on inputs through the quantized layers ``< l`` (§3.3).
        conv_layout: ``"channels"`` (Q-CNN) or ``"rows"`` (sub-vectors of the flattened kernel).
        passes: Gauss-Seidel sweeps over the sub-spaces; iters: Lloyd iterations per visit.
        max_gib: the most memory one layer's fit statistics may take (GiB); a layer needing
            more stops with an error before allocating them.
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
            _check_memory(name, layer, x, w2p.shape[1], out, max_gib)
            x_ref = _layer_inputs(reference, ref_layers[name], x)
            x_q = _layer_inputs(model, layer, x) if error_correction else x_ref
            if x_ref.shape[0] > MAX_ROWS:
                keep = torch.randperm(x_ref.shape[0], generator=gen)[:MAX_ROWS]
                x_ref, x_q = x_ref[keep], x_q[keep]
            if order is not None:
                x_ref, x_q = x_ref[:, order], x_q[:, order]
            if pad:
                x_ref, x_q = F.pad(x_ref, (0, pad)), F.pad(x_q, (0, pad))
            y = torch.cat([x_ref[i:i + _CHUNK].double() @ w2p.double().T for i in range(0, x_ref.shape[0], _CHUNK)])
            del x_ref
            sizes = statistics_bytes(x_q.shape[0], x_q.shape[1], out)
            stats = Moments.of(x_q, y) if sizes["moments"] <= sizes["residuals"] else Residuals(x_q, y)
            cb, codes = response_pq(w2p.double(), stats, cb, codes, passes=passes, iters=iters)
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
    max_gib: float = Field(4.0, gt=0, description="the most memory (GiB) one layer's response-error fit may take")


def calibration_inputs(data: Any, n: int, seed: int) -> torch.Tensor:
    """``n`` random inputs of the training split (all of it when smaller)."""
    x = data.train.tensors[0]
    gen = torch.Generator().manual_seed(seed)
    return x[torch.randperm(x.shape[0], generator=gen)[:n]]


def _apply(ctx: Any, spec: QCNNSpec, finetune: Any) -> Step:
    qcnn_quantize(ctx.model, calibration_inputs(ctx.data, spec.calibration, ctx.seed), spec.subvector,
                  spec.codewords, objective=spec.objective, error_correction=spec.error_correction,
                  conv_layout=spec.conv_layout, passes=spec.passes, iters=spec.iters,
                  half_codebooks=spec.half_codebooks, max_gib=spec.max_gib, layers=spec.layers, exclude=spec.exclude, seed=ctx.seed)
    return Step()


TECHNIQUE = Technique("qcnn", QCNNSpec, _apply)
