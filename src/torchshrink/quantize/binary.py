"""Binary weights: BinaryConnect, Binary-Weight-Networks and Loss-Aware Binarization.

Three ways of training ``ŵ = α · b`` with ``b = sign(w) ∈ {-1, +1}`` (``sign(0) = +1``)
from a full-precision latent weight ``w``, all with the straight-through estimator
(``∂L/∂w = ∂L/∂ŵ``, zeroed where ``|w| > 1`` for BWN, Rastegari et al. 2016 §3.1):

* ``connect`` -- BinaryConnect (Courbariaux, Bengio & David 2015, §2.3-2.4): ``ŵ = H·b``
  with a fixed per-layer ``H``; deterministic ``b = sign(w)`` or stochastic ``b = +1``
  with probability ``σ(w) = clip((w/H + 1)/2, 0, 1)`` (the hard sigmoid, Eq. 3) while
  training. After every optimizer step the latent weight is clipped to ``[-H, H]``, i.e.
  ``w/H`` to ``[-1, 1]`` (§2.4). ``H`` is the paper's Glorot scale
  ``sqrt(1.5 / (fan_in + fan_out))`` (``scale: glorot``, their code's ``H``) or 1.
* ``bwn`` -- Binary-Weight-Networks (Rastegari et al. 2016, Eq. 6): per output channel
  ``α_o = mean_j |w_oj|`` computed from the latent weight in every forward pass.
* ``lab`` -- Loss-Aware Binarization (Hou, Yao & Kwok, ICLR 2017, Eq. 7-8): a proximal
  Newton step whose diagonal Hessian is Adam's second moment, ``d = sqrt(v̂) + ε``: after
  every Adam step on the latent weight, per layer ``α = ||d ⊙ w||₁ / ||d||₁`` and
  ``b = sign(w)`` (the :class:`LAB` callback; the gradient is taken at ``ŵ``).

Packed kind ``"binary"``: ``positive`` (uint8 0/1, the weight's shape) and ``alpha``
(float32, one per output channel for ``bwn``, one per layer otherwise); the weight is
``where(positive, α, -α)`` broadcast along the first (output) dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..core.params import OneOf, check
from ..core.select import select_layers
from ..core.technique import LayerStage, Step, Technique
from ..core.transform import WeightTransform, attach, iter_transforms, original, packer
from ..errors import ModelError, RecipeError
from ..train import Callback, TrainContext
from .half_bias import half_biases
from .pow2 import round_to_grid
from .ternary import first_last

METHOD = OneOf(("connect", "bwn", "lab"))
SCALE = OneOf(("glorot", "one"))
#: ε of LAB's d = sqrt(v̂) + ε (Adam's default).
LAB_EPS = 1e-8


class _SignSTE(torch.autograd.Function):
    """``sign(w)`` (+1 at 0) forward; the gradient passes straight through, masked by ``|w| <= limit``."""

    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, limit: float) -> torch.Tensor:
        ctx.save_for_backward(w)
        ctx.limit = limit
        one = w.new_ones(())
        return torch.where(w >= 0, one, -one)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        (w,) = ctx.saved_tensors
        if math.isinf(ctx.limit):
            return g, None
        return torch.where(w.abs() <= ctx.limit, g, g.new_zeros(())), None


def bwn_alpha(w: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """BWN's α: mean |w| per output channel (Rastegari et al. 2016, Eq. 6), shape ``(out, 1, ...)``.

    α is rounded, with a straight-through gradient, to the nearest float16 (``bits`` 16,
    relative error <= 2^-11) or to the layer's 8-bit power-of-two grid (``bits`` 8,
    ``α_o = k_o · 2^e``, ``k_o <= 255``: error <= 2^-9 of the largest α, see
    :mod:`~torchshrink.quantize.pow2`); both far below the binarization's. The file then
    stores the per-channel scales in 2 or 1 bytes each, exactly.
    """
    alpha = w.abs().reshape(w.shape[0], -1).mean(1)
    if bits == 8:
        alpha = round_to_grid(alpha, 8, signed=False)
    else:
        alpha = alpha + (alpha.to(torch.float16).to(w.dtype) - alpha).detach()  # exact rounding, full-precision grad
    return alpha.reshape(w.shape[0], *([1] * (w.dim() - 1)))


def glorot_scale(w: torch.Tensor) -> float:
    """BinaryConnect's ``H = sqrt(1.5 / (fan_in + fan_out))`` of a Linear / Conv weight."""
    fan_out = w.shape[0] * int(np.prod(w.shape[2:]))
    fan_in = int(np.prod(w.shape[1:]))
    return math.sqrt(1.5 / (fan_in + fan_out))


class BinaryWeights(WeightTransform):
    """``w ↦ α · sign(w)``: BinaryConnect (``connect``), BWN (``bwn``) or LAB (``lab``).

    Attributes:
        method: ``"connect"``, ``"bwn"`` or ``"lab"``.
        alpha: buffer, the per-layer scale of ``connect`` (``H``) and ``lab`` (updated by
            :class:`LAB`), shape ``(1,)``; ``bwn`` computes its per-channel α in forward.
        stochastic: BinaryConnect's stochastic binarization while training.
        alpha_bits: 16 (float16) or 8 (a power-of-two grid): how BWN's per-channel α is
            rounded (:func:`bwn_alpha`) and so stored.
    """

    def __init__(self, method: str, alpha: float, *, stochastic: bool = False, alpha_bits: int = 16) -> None:
        super().__init__()
        self.method = check(method, "method", "binary", METHOD)
        self.alpha_bits = check(alpha_bits, "alpha_bits", "binary", OneOf((8, 16)))
        if stochastic and self.method != "connect":
            raise ModelError("The 'stochastic' parameter of binary applies to method 'connect' only.")
        self.stochastic = bool(stochastic)
        self.register_buffer("alpha", torch.tensor([float(alpha)], dtype=torch.float32))

    def scale(self, w: torch.Tensor) -> torch.Tensor:
        """α as used in forward: per output channel (``bwn``) or the per-layer buffer."""
        if self.method == "bwn":
            return bwn_alpha(w, self.alpha_bits)
        return self.alpha.to(w.dtype).reshape(())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.method == "bwn":  # α(w) · sign(w): autograd gives the α term, the STE the sign term
            return bwn_alpha(w, self.alpha_bits) * _SignSTE.apply(w, 1.0)
        alpha = self.alpha.to(w.dtype).reshape(())
        if self.stochastic and self.training and torch.is_grad_enabled():
            p = ((w.detach() / alpha + 1) / 2).clamp(0, 1)  # hard sigmoid (BinaryConnect Eq. 3)
            value = torch.where(torch.rand_like(p) < p, alpha, -alpha)
        else:
            value = torch.where(w.detach() >= 0, alpha, -alpha)
        # straight-through: the latent weight receives dL/dŵ itself (w - w.detach() is exactly 0)
        return value + (w - w.detach())

    @torch.no_grad()
    def pack(self, w_in: torch.Tensor) -> dict:
        """The "binary" packed kind: uint8 ``positive`` (w >= 0) and float32 ``alpha`` ((out,) or (1,))."""
        alpha = self.scale(w_in).reshape(-1).to("cpu", torch.float32).numpy().copy()
        return {"form": "binary", "shape": list(w_in.shape), "positive": (w_in >= 0).cpu().numpy().astype(np.uint8),
                "alpha": alpha}

    def extra_repr(self) -> str:
        extra = ", stochastic" if self.stochastic else ""
        if self.method == "bwn":
            return f"method=bwn, alpha_bits={self.alpha_bits}"
        return f"method={self.method}{extra}, alpha={float(self.alpha):.4g}"


class ClipLatent(Callback):
    """BinaryConnect §2.4: after each update clip the latent weights to ``[-H, H]``."""

    def on_step_end(self, ctx: TrainContext) -> None:
        with torch.no_grad():
            for at in iter_transforms(ctx.model, BinaryWeights):
                if at.transform.method == "connect":
                    h = float(at.transform.alpha)
                    original(at.layer, at.tensor_name).clamp_(-h, h)


class LAB(Callback):
    """Loss-Aware Binarization (Hou et al. 2017, Eq. 8) as a callback on an Adam optimizer.

    After every optimizer step each ``lab`` layer gets ``α = ||d ⊙ w||₁ / ||d||₁`` with
    ``d = sqrt(v / (1 - β₂^t)) + ε`` from Adam's second moment ``v`` of its latent weight;
    ``b = sign(w)`` follows from the latent weight in forward.
    """

    def on_train_begin(self, ctx: TrainContext) -> None:
        self._layers = [at for at in iter_transforms(ctx.model, BinaryWeights) if at.transform.method == "lab"]

    def on_step_end(self, ctx: TrainContext) -> None:
        opt = ctx.optimizer
        if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
            raise RecipeError("LAB needs the Adam optimizer (finetune.optimizer: adam); its second moments "
                              "are the diagonal Hessian")
        beta2 = opt.param_groups[0]["betas"][1]
        with torch.no_grad():
            for at in self._layers:
                w = original(at.layer, at.tensor_name)
                state = opt.state.get(w, {})
                if "exp_avg_sq" in state:
                    at.transform.alpha.copy_(lab_alpha(w, state["exp_avg_sq"], float(state["step"]), beta2))


def lab_alpha(w: torch.Tensor, exp_avg_sq: torch.Tensor, step: float, beta2: float, eps: float = LAB_EPS) -> torch.Tensor:
    """LAB's closed form ``α = ||d ⊙ w||₁ / ||d||₁``, ``d = sqrt(v̂) + ε`` (Hou et al. 2017, Eq. 8), shape (1,)."""
    d = (exp_avg_sq / (1 - beta2 ** step)).sqrt() + eps
    return ((d * w.abs()).sum() / d.sum()).reshape(1).to(torch.float32)


@torch.no_grad()
def binarize(
    model: nn.Module,
    method: str = "bwn",
    *,
    stochastic: bool = False,
    scale: str = "glorot",
    layers: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    keep_first_last: bool = False,
    half_bias: bool = False,
    bias_bits: int = 16,
    alpha_bits: int = 16,
) -> nn.Module:
    """Attach :class:`BinaryWeights` to the selected layers of ``model`` (in place).

    With ``half_bias`` their biases are trained float16-representable (``bias_bits`` 16)
    or on an 8-bit power-of-two grid (8; :mod:`~torchshrink.quantize.half_bias`), so the
    file stores them exactly in that many bits. ``alpha_bits`` is the same for BWN's
    per-channel α (:func:`bwn_alpha`).

    ``connect`` starts its latent weights clipped to ``[-H, H]`` (``scale``: ``"glorot"`` or
    ``"one"``); ``lab`` starts with ``α = mean|w|`` (uniform ``d``) until Adam's first step.
    Train ``lab`` with the :class:`LAB` callback and ``connect`` with :class:`ClipLatent`.
    """
    method = check(method, "method", "binary", METHOD)
    scale = check(scale, "scale", "binary", SCALE)
    chosen = select_layers(model, layers, exclude)
    if keep_first_last:
        skip = first_last([n for n, _ in select_layers(model)])
        chosen = [(n, m) for n, m in chosen if n not in skip]
    if not chosen:
        raise ModelError("binary selected no layer")
    for name, layer in chosen:
        if packer(layer) is not None:
            raise ModelError(f"layer {name!r} is already quantized; build the model again to quantize it differently")
        if not bool(torch.isfinite(original(layer)).all()):
            raise ModelError(f"layer {name!r} has NaN or infinite weights; fix or retrain it before binarizing")
    for _, layer in chosen:
        w = original(layer)
        if method == "connect":
            alpha = glorot_scale(w) if scale == "glorot" else 1.0
            w.clamp_(-alpha, alpha)
        else:
            alpha = float(w.abs().mean())
        attach(layer, BinaryWeights(method, alpha, stochastic=stochastic, alpha_bits=alpha_bits).to(w.device))
    if half_bias:
        half_biases([layer for _, layer in chosen], bias_bits)
    return model


# ---------------------------------------------------------------- the recipe stage
class BinarySpec(LayerStage):
    """BinaryConnect (Courbariaux 2015), BWN (Rastegari 2016) or LAB (Hou 2017) binary weights."""

    technique: Literal["binary"]
    method: Literal["connect", "bwn", "lab"] = Field("bwn", description="binarization method")
    stochastic: bool = Field(False, description="BinaryConnect's stochastic binarization")
    scale: Literal["glorot", "one"] = Field("glorot", description="BinaryConnect's H: Glorot scale or 1")
    keep_first_last: bool = Field(False, description="leave the first and last layer full precision")
    half_bias: bool = Field(True, description="train the binarized layers' biases on a low-precision grid "
                            "(bias_bits), stored exactly")
    bias_bits: Literal[8, 16] = Field(8, description="with half_bias: 16 = float16 biases, 8 = int8 times a "
                                      "power of two per layer")
    alpha_bits: Literal[8, 16] = Field(8, description="BWN's per-channel alpha: 16 = float16, 8 = uint8 times a "
                                       "power of two per layer")


def _apply(ctx: Any, spec: BinarySpec, finetune: Any) -> Step:
    if spec.method == "lab" and finetune.optimizer not in ("adam", "adamw"):
        raise RecipeError(f"binary method 'lab' needs finetune.optimizer: adam (got {finetune.optimizer!r}); "
                          "Adam's second moments are LAB's diagonal Hessian")
    if spec.stochastic and spec.method != "connect":
        raise RecipeError("stochastic: true applies to method 'connect' only")
    binarize(ctx.model, spec.method, stochastic=spec.stochastic, scale=spec.scale, layers=spec.layers,
             exclude=spec.exclude, keep_first_last=spec.keep_first_last, half_bias=spec.half_bias,
             bias_bits=spec.bias_bits, alpha_bits=spec.alpha_bits)
    callbacks: list[Callback] = {"connect": [ClipLatent()], "lab": [LAB()], "bwn": []}[spec.method]
    return Step(callbacks=callbacks)


TECHNIQUE = Technique("binary", BinarySpec, _apply)
