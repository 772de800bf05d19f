"""Trained Ternary Quantization (Zhu, Han, Mao & Dally, "Trained Ternary Quantization", ICLR 2017).

Each selected layer keeps a full-precision *latent* weight ``w̃``, normalized once to
``[-1, 1]`` by dividing by ``max|w|`` (§3), and two trainable per-layer scales ``Wp`` and
``Wn``. With the threshold ``Δ = t · max|w̃|`` (Eq. 9, ``t = 0.05`` by default) the
forward pass uses (Eq. 6)::

    w_t =  Wp   where w̃ >  Δ        (the positive set I_p)
           0    where |w̃| <= Δ      (the zero set I_z)
          -Wn   where w̃ < -Δ        (the negative set I_n)

Gradients (Eq. 7 and Eq. 8), with ``g = ∂L/∂w_t``::

    ∂L/∂Wp = Σ_{i ∈ I_p} g_i              ∂L/∂Wn = -Σ_{i ∈ I_n} g_i
    ∂L/∂w̃  = Wp·g on I_p,  g on I_z,  Wn·g on I_n

The paper prints ``∂L/∂Wn = Σ_{I_n} g`` and its ports disagree on the sign and on sum vs
mean; with the forward value ``-Wn`` the true derivative is ``-Σ_{I_n} g`` (a sum), which
is what :class:`TrainedTernary` computes and ``tests/test_ternary.py`` checks by finite
differences. ``Δ`` is treated as a constant in the backward pass, as in the paper.

``Wp`` and ``Wn`` start at the mean magnitude of the weights in ``I_p`` and ``I_n``
(in the layer's original units), so the ternary layer starts close to the trained one;
the paper leaves the initial value open. First and last layers stay full precision by
default (§4: "we do not quantize the first convolution layer and the last fully-connected
layer"); ``keep_first_last=False`` or ``exclude`` patterns change that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..core.params import Interval, check
from ..core.select import select_layers
from ..core.technique import LayerStage, Step, Technique
from ..core.transform import WeightTransform, attach, original, packer
from ..errors import ModelError
from .half_bias import half_biases

#: t in Δ = t · max|w̃| (the paper's 0.05).
THRESHOLD = Interval(float, 0.0, 1.0, "left")
DEFAULT_THRESHOLD = 0.05
#: Codes of the packed ternary kind: 0 = zero, 1 = +Wp, 2 = -Wn.
ZERO, POS, NEG = 0, 1, 2


class _TTQ(torch.autograd.Function):
    """Forward Eq. 6, backward Eqs. 7-8 (Δ held constant)."""

    @staticmethod
    def forward(ctx: Any, latent: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        pos, neg = latent > delta, latent < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        zero = latent.new_zeros(())
        return torch.where(pos, wp.reshape(()), torch.where(neg, -wn.reshape(()), zero))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        pos, neg, wp, wn = ctx.saved_tensors
        zero = g.new_zeros(())
        g_wp = torch.where(pos, g, zero).sum().reshape(wp.shape)
        g_wn = -torch.where(neg, g, zero).sum().reshape(wn.shape)
        g_latent = torch.where(pos, wp.reshape(()) * g, torch.where(neg, wn.reshape(()) * g, g))
        return g_latent, g_wp, g_wn, None


def ternary_sets(latent: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Δ, I_p mask, I_n mask) of a latent weight: Δ = t · max|w̃| (Eq. 9)."""
    delta = threshold * latent.detach().abs().max()
    return delta, latent > delta, latent < -delta


class TrainedTernary(WeightTransform):
    """``w̃ ↦ {+Wp, 0, -Wn}`` (TTQ Eq. 6) with trainable per-layer ``wp`` and ``wn``.

    Attributes:
        wp, wn: float32 parameters of shape ``(1,)`` (the magnitudes of the positive and
            negative level).
        threshold: ``t`` of ``Δ = t · max|w̃|``.
    """

    def __init__(self, wp: float, wn: float, threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__()
        self.threshold = check(threshold, "threshold", "ttq", THRESHOLD)
        self.wp = nn.Parameter(torch.tensor([float(wp)], dtype=torch.float32))
        self.wn = nn.Parameter(torch.tensor([float(wn)], dtype=torch.float32))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        delta = self.threshold * w.detach().abs().max()
        return _TTQ.apply(w, self.wp.to(w.dtype), self.wn.to(w.dtype), delta)

    @torch.no_grad()
    def pack(self, w_in: torch.Tensor) -> dict:
        """The "ternary" packed kind: uint8 codes (0 zero, 1 +Wp, 2 -Wn) and ``scales = [Wp, Wn]``."""
        _, pos, neg = ternary_sets(w_in, self.threshold)
        codes = np.zeros(tuple(w_in.shape), np.uint8)
        codes[pos.cpu().numpy()] = POS
        codes[neg.cpu().numpy()] = NEG
        scales = torch.cat([self.wp, self.wn]).detach().to("cpu", torch.float32).numpy().copy()
        return {"form": "ternary", "shape": list(w_in.shape), "codes": codes, "scales": scales}

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, wp={float(self.wp):.4g}, wn={float(self.wn):.4g}"


def first_last(names: Sequence[str]) -> set[str]:
    """The first and the last of the model's weight layers (kept full precision by default)."""
    return {names[0], names[-1]} if names else set()


@torch.no_grad()
def ttq(
    model: nn.Module,
    threshold: float = DEFAULT_THRESHOLD,
    *,
    layers: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    keep_first_last: bool = True,
    half_bias: bool = False,
) -> nn.Module:
    """Attach :class:`TrainedTernary` to the selected layers of ``model`` (in place).

    Each latent weight is divided by its ``max|w|`` (TTQ §3); ``Wp``/``Wn`` start at the mean
    magnitude of the original weights above / below ``±Δ``. With ``keep_first_last`` the
    model's first and last linear/conv layers stay full precision (TTQ §4). With
    ``half_bias`` their biases are trained float16-representable
    (:mod:`~torchshrink.quantize.half_bias`), stored exactly in 16 bits.
    """
    threshold = check(threshold, "threshold", "ttq", THRESHOLD)
    chosen = select_layers(model, layers, exclude)
    if keep_first_last:
        skip = first_last([n for n, _ in select_layers(model)])
        chosen = [(n, m) for n, m in chosen if n not in skip]
    if not chosen:
        raise ModelError("ttq selected no layer (the first and last layers stay full precision unless "
                         "keep_first_last is false)")
    for name, layer in chosen:
        if packer(layer) is not None:
            raise ModelError(f"layer {name!r} is already quantized; build the model again to quantize it differently")
        w = original(layer)
        if not bool(torch.isfinite(w).all()) or float(w.abs().max()) == 0.0:
            raise ModelError(f"layer {name!r} has NaN, infinite or all-zero weights; ttq needs a trained layer")
    for _, layer in chosen:
        w = original(layer)
        scale = w.abs().max()
        latent = w / scale
        _, pos, neg = ternary_sets(latent, threshold)
        wp = float(w[pos].mean()) if bool(pos.any()) else float(scale) / 2
        wn = float(-w[neg].mean()) if bool(neg.any()) else float(scale) / 2
        w.copy_(latent)
        attach(layer, TrainedTernary(wp, wn, threshold).to(w.device))
    if half_bias:
        half_biases([layer for _, layer in chosen])
    return model


# ---------------------------------------------------------------- the recipe stage
class TTQSpec(LayerStage):
    """Zhu et al. 2017: trained ternary quantization (latent weights + trained Wp, Wn)."""

    technique: Literal["ttq"]
    threshold: float = THRESHOLD.field(DEFAULT_THRESHOLD, description="t in Δ = t·max|w̃|")
    keep_first_last: bool = Field(True, description="leave the first and last layer full precision")
    half_bias: bool = Field(True, description="train the ternary layers' biases float16-representable "
                            "(stored exactly in 16 bits)")


def _apply(ctx: Any, spec: TTQSpec, finetune: Any) -> Step:
    ttq(ctx.model, spec.threshold, layers=spec.layers, exclude=spec.exclude, keep_first_last=spec.keep_first_last,
        half_bias=spec.half_bias)
    return Step()


TECHNIQUE = Technique("ttq", TTQSpec, _apply)
