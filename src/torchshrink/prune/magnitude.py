"""Magnitude pruning (Han et al., "Learning both Weights and Connections for Efficient
Neural Networks", NIPS 2015).

Han et al. remove every connection whose magnitude is under a layer threshold
``quality × std(W_l)`` (§3.2 / Distiller's reading of it), then retrain the remaining
weights at 1/10 of the original learning rate with L2 regularization, and repeat
(§3.3, iterative pruning). While retraining, the dropout rate of layer ``i`` is scaled by
``sqrt(C_ir / C_io)`` (Eq. 2: C = connections kept / originally). The masks here are
monotone: a weight once pruned stays pruned.

Besides the quality threshold, a target sparsity per layer (exact: ``round(s·n)``
entries removed) or a global target over all selected layers is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..core.params import FRACTION, POSITIVE_INT, Interval, OneOf, check
from ..core.select import per_layer, select_layers, unwrap, weight_layers
from ..core.technique import LayerStage, Step, Technique
from ..errors import ModelError, RecipeError
from ..train import Callback, TrainConfig, TrainContext
from .masks import broadcast_masks, ensure_mask, mask_of, set_mask

SparsitySpec = float | Mapping[str, float]
#: Prune → retrain rounds when none is given.
ITERATIONS = 3
QUALITY = Interval(float, 0.0, None)
SCOPES = OneOf(("layer", "global"))


def fraction(value: Any, name: str = "sparsity") -> float:
    """``value`` as a float in [0, 1) (a sparsity), or a :class:`ModelError`."""
    return check(value, name, None, FRACTION)


def _quality(value: Any, name: str = "quality") -> float:
    return check(value, name, None, QUALITY)


def _check_finite(name: str, w: torch.Tensor) -> None:
    if not bool(torch.isfinite(w).all()):
        raise ModelError(f"layer {name!r} has NaN or infinite weights; refusing to prune it")


def keep_smallest_removed(scores: torch.Tensor, n_remove: int) -> torch.Tensor:
    """Boolean keep-mask removing exactly ``n_remove`` entries of smallest score.

    Ties are broken by position (stable sort), so the removed count is always exact.
    """
    flat = scores.detach().reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_remove > 0:
        order = torch.argsort(flat, stable=True)
        keep[order[:n_remove]] = False
    return keep.reshape(scores.shape)


def sparsity_mask(weight: torch.Tensor, sparsity: float, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask of the largest-magnitude weights at exactly ``round(sparsity·n)`` zeros.

    With a ``prior`` mask, entries it prunes stay pruned (they rank below every kept
    weight), so the count stays exact unless the prior already prunes more.
    """
    scores = weight.detach().abs()
    if prior is not None:
        scores = scores.masked_fill(~prior.bool(), -1.0)
    keep = keep_smallest_removed(scores, round(sparsity * weight.numel()))
    return keep if prior is None else keep & prior.bool()


@torch.no_grad()
def prune_layer(
    layer: nn.Module, *, sparsity: float | None = None, quality: float | None = None, name: str = "layer"
) -> float:
    """Prune one layer by target sparsity or by Han's ``quality × std`` threshold.

    The new mask is combined with the old one (monotone pruning). Returns the layer's
    sparsity afterwards.
    """
    if (sparsity is None) == (quality is None):
        raise ModelError("give exactly one of 'sparsity' or 'quality'")
    w = layer.weight
    _check_finite(name, w)
    old = mask_of(layer)
    prior = old.mask if old is not None else None
    if sparsity is not None:
        keep = sparsity_mask(w, fraction(sparsity), prior)
    else:
        keep = w.abs() > _quality(quality) * w.std()
        if prior is not None:
            keep &= prior.bool()
    return set_mask(layer, keep).sparsity


@torch.no_grad()
def magnitude(
    model: nn.Module,
    sparsity: SparsitySpec | None = None,
    *,
    quality: SparsitySpec | None = None,
    layers: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    scope: str = "layer",
) -> nn.Module:
    """Attach magnitude-pruning masks to the selected layers of ``model`` (in place).

    Args:
        sparsity: fraction of weights to remove, one value or ``{pattern: value}``;
            layers a mapping does not cover are left unpruned (but selected).
        quality: Han's threshold multiplier (threshold = quality × std of the layer).
        layers / exclude: name patterns (``fc*``, ``features.*``).
        scope: ``"layer"`` (each layer to its own target) or ``"global"`` (one magnitude
            threshold over all selected layers, exact total count; needs a scalar sparsity).
    """
    chosen = select_layers(model, layers, exclude)
    if (sparsity is None) == (quality is None):
        raise ModelError("give exactly one of 'sparsity' or 'quality'")
    check(scope, "scope", "magnitude", SCOPES)
    if scope == "global":
        if sparsity is None or isinstance(sparsity, Mapping):
            raise ModelError("global scope needs one scalar 'sparsity'")
        _prune_global(chosen, fraction(sparsity))
        return model
    names = [n for n, _ in chosen]
    targets = (per_layer(sparsity, names, "sparsity", fraction) if sparsity is not None
               else per_layer(quality, names, "quality", _quality))
    for name, layer in chosen:
        if name in targets:
            kind = "sparsity" if sparsity is not None else "quality"
            prune_layer(layer, **{kind: targets[name]}, name=name)
    return model


def _prune_global(chosen: list[tuple[str, nn.Module]], sparsity: float) -> None:
    for name, layer in chosen:
        _check_finite(name, layer.weight)
    parts = []
    for _, layer in chosen:
        score = layer.weight.detach().abs().reshape(-1)
        old = mask_of(layer)
        parts.append(score if old is None else score.masked_fill(~old.mask.bool().reshape(-1), -1.0))
    scores = torch.cat(parts)
    keep = keep_smallest_removed(scores, round(sparsity * scores.numel())) & (scores >= 0)
    offset = 0
    for _, layer in chosen:
        n = layer.weight.numel()
        set_mask(layer, keep[offset : offset + n].reshape(layer.weight.shape))
        offset += n


def iteration_targets(final: float, iterations: int) -> list[float]:
    """Sparsities for ``iterations`` prune-retrain rounds ending at ``final``.

    Each round removes the same fraction of the weights still kept:
    ``kept_i = kept_final^(i/n)``.
    """
    kept = 1.0 - final
    return [1.0 - kept ** (i / iterations) for i in range(1, iterations + 1)]


def dropout_owners(model: nn.Module) -> dict[str, nn.Dropout]:
    """Map each weight layer to the dropout module applied to its input.

    In module-definition order, a dropout belongs to the next linear/conv layer (the
    convention of the zoo's models: ``drop1`` sits right before ``fc2``).
    """
    owners: dict[str, nn.Dropout] = {}
    pending: nn.Dropout | None = None
    weight_names = {id(m): n for n, m in weight_layers(model)}
    for _, m in unwrap(model).named_modules():
        if isinstance(m, nn.Dropout):
            pending = m
        elif id(m) in weight_names and pending is not None:
            owners[weight_names[id(m)]] = pending
            pending = None
    return owners


class IterativePruning(Callback):
    """Han et al.'s prune → retrain loop as a training callback.

    At the start of epoch ``i·epochs_per_iteration`` (i = 0..n−1) the selected layers are
    pruned to the i-th target (see :func:`iteration_targets`), and the dropout on each
    pruned layer's input is rescaled by ``sqrt(kept fraction)`` (Han et al. Eq. 2).
    The learning rate (1/10 of the baseline's) and the L2 weight decay are the training
    configuration's business.
    """

    def __init__(
        self,
        sparsity: SparsitySpec | None = None,
        *,
        quality: SparsitySpec | None = None,
        iterations: int = ITERATIONS,
        epochs_per_iteration: int = 1,
        layers: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        scope: str = "layer",
        scale_dropout: bool = True,
    ) -> None:
        check(iterations, "iterations", "IterativePruning", POSITIVE_INT)
        check(epochs_per_iteration, "epochs_per_iteration", "IterativePruning", POSITIVE_INT)
        self.sparsity, self.quality = sparsity, quality
        self.iterations, self.epochs_per_iteration = iterations, epochs_per_iteration
        self.layers, self.exclude, self.scope = layers, exclude, scope
        self.scale_dropout = scale_dropout

    def attach(self, model: nn.Module) -> None:
        """Attach all-ones masks to the selected layers (structure only, idempotent)."""
        for _, layer in select_layers(model, self.layers, self.exclude):
            ensure_mask(layer)

    def _target(self, i: int) -> tuple[SparsitySpec | None, SparsitySpec | None]:
        frac = (i + 1) / self.iterations
        if self.sparsity is not None:
            if isinstance(self.sparsity, Mapping):
                return {k: iteration_targets(fraction(v, f"sparsity[{k}]"), self.iterations)[i]
                        for k, v in self.sparsity.items()}, None
            return iteration_targets(fraction(self.sparsity), self.iterations)[i], None
        q = self.quality
        return None, ({k: v * frac for k, v in q.items()} if isinstance(q, Mapping) else q * frac)

    def on_train_begin(self, ctx: TrainContext) -> None:
        self.attach(ctx.model)
        self._p0 = {n: d.p for n, d in dropout_owners(ctx.model).items()}

    def on_epoch_begin(self, ctx: TrainContext) -> None:
        i, r = divmod(ctx.epoch, self.epochs_per_iteration)
        if r == 0 and i < self.iterations:
            sparsity, quality = self._target(i)
            magnitude(ctx.model, sparsity, quality=quality, layers=self.layers, exclude=self.exclude, scope=self.scope)
            broadcast_masks(ctx.model)
        # Dropout rates are not in the state dict: set them every epoch (also after a resume).
        self.rescale_dropout(ctx.model)

    def rescale_dropout(self, model: nn.Module) -> None:
        """Set each owned dropout to ``p0 · sqrt(kept / total)`` of its layer."""
        if not self.scale_dropout:
            return
        layers = dict(weight_layers(model))
        for name, drop in dropout_owners(model).items():
            m = mask_of(layers[name])
            if m is not None and name in self._p0:
                drop.p = self._p0[name] * math.sqrt(1.0 - m.sparsity)


# ---------------------------------------------------------------- the recipe stage
Sparsity = FRACTION.type


class MagnitudeSpec(LayerStage):
    """Han et al. 2015: magnitude threshold, iterative prune → retrain."""

    technique: Literal["magnitude"]
    sparsity: Sparsity | dict[str, Sparsity] | None = Field(None, description="fraction of weights removed, per layer")
    quality: float | dict[str, float] | None = Field(None, description="threshold = quality × std of the layer")
    scope: Literal["layer", "global"] = "layer"
    iterations: int = POSITIVE_INT.field(ITERATIONS, description="prune → retrain rounds")
    scale_dropout: bool = Field(True, description="dropout rate × sqrt(kept fraction) (Han et al. Eq. 2)")

    @model_validator(mode="after")
    def _one_target(self) -> MagnitudeSpec:
        if (self.sparsity is None) == (self.quality is None):
            raise ValueError("give exactly one of 'sparsity' or 'quality'")
        return self


def _apply(ctx: Any, spec: MagnitudeSpec, finetune: TrainConfig) -> Step:
    if finetune.epochs == 0:  # one shot, no retraining
        magnitude(ctx.model, spec.sparsity, quality=spec.quality, layers=spec.layers, exclude=spec.exclude,
                  scope=spec.scope)
        return Step(finetune=False)
    if finetune.epochs < spec.iterations:
        raise RecipeError(f"finetune.epochs ({finetune.epochs}) must be >= iterations ({spec.iterations})")
    return Step(callbacks=[IterativePruning(
        spec.sparsity, quality=spec.quality, iterations=spec.iterations,
        epochs_per_iteration=finetune.epochs // spec.iterations, layers=spec.layers, exclude=spec.exclude,
        scope=spec.scope, scale_dropout=spec.scale_dropout)])


TECHNIQUE = Technique("magnitude", MagnitudeSpec, _apply)
