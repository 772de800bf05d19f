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
from fnmatch import fnmatchcase

import torch
from torch import nn

from ..errors import ModelError
from ..selection import select_layers, unwrap, weight_layers
from ..train import Callback, TrainContext
from .masks import broadcast_masks, ensure_mask, mask_of, set_mask

SparsitySpec = float | Mapping[str, float]


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0):
        raise ModelError(f"The '{name}' parameter must be a float in [0, 1). Got {value!r} instead.")
    return float(value)


def _check_finite(name: str, w: torch.Tensor) -> None:
    if not bool(torch.isfinite(w).all()):
        raise ModelError(f"layer {name!r} has NaN or infinite weights; refusing to prune it")


def per_layer(spec: SparsitySpec, name: str, what: str = "sparsity") -> float | None:
    """The value for layer ``name``: a scalar, or the first matching pattern of a mapping."""
    if isinstance(spec, Mapping):
        for pattern, value in spec.items():
            if fnmatchcase(name, pattern):
                return _check_fraction(f"{what}[{pattern}]", value) if what == "sparsity" else float(value)
        return None
    return _check_fraction(what, spec) if what == "sparsity" else float(spec)


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
        keep = sparsity_mask(w, _check_fraction("sparsity", sparsity), prior)
    else:
        if quality < 0 or not math.isfinite(quality):
            raise ModelError(f"The 'quality' parameter must be a float >= 0. Got {quality!r} instead.")
        keep = w.abs() > quality * w.std()
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
    if scope not in ("layer", "global"):
        raise ModelError(f"The 'scope' parameter must be 'layer' or 'global'. Got {scope!r} instead.")
    if scope == "global":
        if sparsity is None or isinstance(sparsity, Mapping):
            raise ModelError("global scope needs one scalar 'sparsity'")
        _prune_global(chosen, _check_fraction("sparsity", sparsity))
        return model
    for name, layer in chosen:
        if sparsity is not None:
            s = per_layer(sparsity, name)
            if s is not None:
                prune_layer(layer, sparsity=s, name=name)
        else:
            q = per_layer(quality, name, what="quality")
            if q is not None:
                prune_layer(layer, quality=q, name=name)
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
        iterations: int = 3,
        epochs_per_iteration: int = 1,
        layers: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        scope: str = "layer",
        scale_dropout: bool = True,
    ) -> None:
        if iterations < 1 or epochs_per_iteration < 1:
            raise ModelError("'iterations' and 'epochs_per_iteration' must be >= 1")
        self.sparsity, self.quality = sparsity, quality
        self.iterations, self.epochs_per_iteration = iterations, epochs_per_iteration
        self.layers, self.exclude, self.scope = layers, exclude, scope
        self.scale_dropout = scale_dropout
        self.history: list[dict[str, float]] = []

    def attach(self, model: nn.Module) -> None:
        """Attach all-ones masks to the selected layers (structure only, idempotent)."""
        for _, layer in select_layers(model, self.layers, self.exclude):
            ensure_mask(layer)

    def _target(self, i: int) -> tuple[SparsitySpec | None, SparsitySpec | None]:
        frac = (i + 1) / self.iterations
        if self.sparsity is not None:
            if isinstance(self.sparsity, Mapping):
                return {k: iteration_targets(_check_fraction(f"sparsity[{k}]", v), self.iterations)[i]
                        for k, v in self.sparsity.items()}, None
            return iteration_targets(_check_fraction("sparsity", self.sparsity), self.iterations)[i], None
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
