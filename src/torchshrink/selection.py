"""Selecting layers by name patterns, as the user sees the names.

Recipes choose layers with shell-style patterns over ``model.named_modules()`` names
(``fc1``, ``features.*``, ``layer1.*.conv1``). Wrapper prefixes (DDP's ``module.``) and
parametrization internals never appear in these names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from torch import nn

from .errors import ModelError

#: Layer types that carry a prunable / quantizable ``weight``.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def unwrap(model: nn.Module) -> nn.Module:
    """Return the user's model inside a DDP/DataParallel wrapper (or the model itself)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """All (name, module) pairs of linear and convolution layers, in definition order."""
    return [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, WEIGHT_LAYERS)]


def select_layers(
    model: nn.Module,
    patterns: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    *,
    types: tuple[type[nn.Module], ...] = WEIGHT_LAYERS,
) -> list[tuple[str, nn.Module]]:
    """Layers whose name matches any of ``patterns`` (default: all) and none of ``exclude``.

    A pattern that matches no layer of a suitable type is an error naming the pattern and
    the layers that exist, so a typo in a recipe never silently prunes nothing.
    """
    pats = _as_list(patterns) or ["*"]
    excl = _as_list(exclude)
    candidates = [(n, m) for n, m in unwrap(model).named_modules() if isinstance(m, types)]
    names = [n for n, _ in candidates]
    for pat in pats + excl:
        if not any(fnmatch.fnmatchcase(n, pat) for n in names):
            raise ModelError(
                f"layer pattern {pat!r} matches no layer; layers are: {', '.join(names) or '(none)'}"
            )
    chosen = [
        (n, m)
        for n, m in candidates
        if any(fnmatch.fnmatchcase(n, p) for p in pats)
        and not any(fnmatch.fnmatchcase(n, p) for p in excl)
    ]
    if not chosen:
        raise ModelError(f"patterns {pats} minus {excl} select no layer")
    return chosen


def _as_list(p: Iterable[str] | str | None) -> list[str]:
    if p is None:
        return []
    if isinstance(p, str):
        return [p]
    return list(p)
