"""Gradual pruning with the cubic sparsity schedule (Zhu & Gupta, "To prune, or not to
prune: exploring the efficacy of pruning for model compression", 2017).

Eq. 1: over n pruning steps of Δt training steps starting at t0,

    s_t = s_f + (s_i − s_f) · (1 − (t − t0) / (n·Δt))³,   t ∈ {t0, t0+Δt, …, t0+n·Δt}

Every Δt steps each selected layer's binary mask is recomputed to zero its smallest-
magnitude weights until the layer reaches s_t; masked weights get no gradient and stay
zero, so they remain the smallest and stay masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..core.params import FRACTION, POSITIVE_INT, check
from ..core.select import per_layer, select_layers
from ..core.technique import LayerStage, Step, Technique
from ..errors import ModelError, RecipeError
from ..train import Callback, TrainConfig, TrainContext
from .magnitude import SparsitySpec, fraction, sparsity_mask
from .masks import broadcast_masks, ensure_mask, mask_of, set_mask


#: Δt, training steps between mask updates, when none is given.
FREQUENCY = 10


def agp_sparsity(step: int, *, initial: float, final: float, start: int, frequency: int, n: int) -> float:
    """Target sparsity at training step ``step`` (Zhu & Gupta Eq. 1).

    Before ``start`` the target is ``initial``; after ``start + n·frequency`` it is
    ``final``; in between it is evaluated at the last pruning step ``t0 + kΔt ≤ step``.
    """
    if step < start:
        return initial
    k = min((step - start) // frequency, n)
    frac = k / n if n > 0 else 1.0
    return final + (initial - final) * (1.0 - frac) ** 3


class AGP(Callback):
    """Automated gradual pruning as a training callback.

    Args:
        sparsity: final sparsity s_f, one value or ``{pattern: value}`` per layer.
        initial_sparsity: s_i (default 0).
        start_epoch / end_epoch: the pruning window in epochs (t0 and t0 + nΔt); may be
            fractional.
        frequency: Δt, training steps between mask updates.
        layers / exclude: name patterns of the layers to prune.
    """

    def __init__(
        self,
        sparsity: SparsitySpec,
        *,
        initial_sparsity: float = 0.0,
        start_epoch: float = 0.0,
        end_epoch: float = 1.0,
        frequency: int = FREQUENCY,
        layers: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
    ) -> None:
        check(frequency, "frequency", "AGP", POSITIVE_INT)
        if not 0 <= start_epoch < end_epoch:
            raise ModelError(
                f"AGP needs 0 <= start_epoch < end_epoch. Got start_epoch={start_epoch}, end_epoch={end_epoch}."
            )
        self.sparsity, self.initial = sparsity, initial_sparsity
        self.start_epoch, self.end_epoch, self.frequency = start_epoch, end_epoch, frequency
        self.layers, self.exclude = layers, exclude

    def attach(self, model: nn.Module) -> None:
        """Attach all-ones masks to the selected layers (structure only, idempotent)."""
        chosen = select_layers(model, self.layers, self.exclude)
        self._final = per_layer(self.sparsity, [n for n, _ in chosen], "sparsity", fraction)
        self._layers = [(n, layer) for n, layer in chosen if n in self._final]
        for _, layer in self._layers:
            ensure_mask(layer)

    def on_train_begin(self, ctx: TrainContext) -> None:
        self.attach(ctx.model)
        self.start = round(self.start_epoch * ctx.steps_per_epoch)
        end = round(self.end_epoch * ctx.steps_per_epoch)
        self.n = max(1, (end - self.start) // self.frequency)

    def target(self, step: int, final: float) -> float:
        """The scheduled sparsity of a layer whose final sparsity is ``final``."""
        return agp_sparsity(step, initial=self.initial, final=final, start=self.start,
                            frequency=self.frequency, n=self.n)

    def on_step_begin(self, ctx: TrainContext) -> None:
        t = ctx.step
        if t < self.start or (t - self.start) % self.frequency or (t - self.start) // self.frequency > self.n:
            return
        with torch.no_grad():
            for name, layer in self._layers:
                s = self.target(t, self._final[name])
                set_mask(layer, sparsity_mask(layer.weight, s, mask_of(layer).mask))
        broadcast_masks(ctx.model)


# ---------------------------------------------------------------- the recipe stage
Sparsity = FRACTION.type


class AGPSpec(LayerStage):
    """Zhu & Gupta 2017: gradual pruning with the cubic schedule."""

    technique: Literal["agp"]
    sparsity: Sparsity | dict[str, Sparsity] = Field(..., description="final sparsity s_f, per layer")
    initial_sparsity: Sparsity = Field(0.0, description="s_i")
    start_epoch: float = Field(0.0, ge=0, description="t0, in epochs")
    end_epoch: float = Field(..., gt=0, description="t0 + nΔt, in epochs")
    frequency: int = POSITIVE_INT.field(FREQUENCY, description="steps between mask updates (Δt)")


def _apply(ctx: Any, spec: AGPSpec, finetune: TrainConfig) -> Step:
    if spec.end_epoch > finetune.epochs:
        raise RecipeError(f"end_epoch ({spec.end_epoch}) is after the last finetune epoch ({finetune.epochs})")
    return Step(callbacks=[AGP(spec.sparsity, initial_sparsity=spec.initial_sparsity, start_epoch=spec.start_epoch,
                               end_epoch=spec.end_epoch, frequency=spec.frequency, layers=spec.layers,
                               exclude=spec.exclude)])


TECHNIQUE = Technique("agp", AGPSpec, _apply)
