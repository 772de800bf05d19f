"""Selecting layers by name patterns, as the user sees the names.

Recipes choose layers with shell-style patterns over ``model.named_modules()`` names
(``fc1``, ``features.*``, ``layer1.*.conv1``). Wrapper prefixes (DDP's ``module.``) and
parametrization internals never appear in these names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from torch import nn

from ..errors import ModelError

#: Layer types that carry a prunable / quantizable ``weight``.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def unwrap(model: nn.Module) -> nn.Module:
    """Return the user's model inside a DDP/DataParallel wrapper (or the model itself)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def tensor_key(layer_name: str, tensor_name: str) -> str:
    """The state-dict key of a layer's tensor (``fc1.weight``; ``weight`` for the root module)."""
    return f"{layer_name}.{tensor_name}" if layer_name else tensor_name


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


V = TypeVar("V")


def per_layer(
    spec: V | Mapping[str, V] | None,
    names: Sequence[str],
    what: str,
    check: Callable[[Any, str], V] | None = None,
    *,
    error: type[Exception] = ModelError,
    items: str = "layer",
) -> dict[str, V]:
    """The value of a per-layer setting for each of ``names``: THE resolver of every technique.

    ``spec`` is one value for every layer, or ``{pattern: value}`` where the first pattern
    (shell-style, over the names as the user sees them) that matches a layer gives its
    value; layers no pattern matches are left out of the result. A pattern that matches
    none of ``names`` is an error naming the key and the layers, so ``{fcc1: 0.9}`` never
    silently prunes nothing. ``check(value, key)`` validates (and may convert) each value;
    ``items`` names what ``names`` are in that error (``"tensor"`` for state-dict keys).
    """
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        value = check(spec, what) if check else spec
        return {n: value for n in names}
    for pattern in spec:
        if not isinstance(pattern, str) or not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise error(f"'{what}' has the key {pattern!r}, which matches no {items}; {items}s are: "
                        f"{', '.join(names) or '(none)'}")
    checked = {p: (check(v, f"{what}[{p}]") if check else v) for p, v in spec.items()}
    out: dict[str, V] = {}
    for n in names:
        hit = next((p for p in checked if fnmatch.fnmatchcase(n, p)), None)
        if hit is not None:
            out[n] = checked[hit]
    return out


def _as_list(p: Iterable[str] | str | None) -> list[str]:
    if p is None:
        return []
    if isinstance(p, str):
        return [p]
    return list(p)
