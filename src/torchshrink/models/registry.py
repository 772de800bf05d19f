"""Build zoo models by name, and rebuild them from the spec they carry.

Every model from :func:`build_model` has ``model.zoo_spec``, a JSON-serializable dict
``{"name", "input_shape", "num_classes", "kwargs"}`` (kwargs with their defaults filled
in), so a saved file can rebuild the architecture with :func:`build_from_spec`.
The spec describes the architecture as built: after surgery that changes shapes
(filter pruning, factorization) it no longer does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from torch import nn

from ..errors import ModelError
from ._common import check_input_shape, check_num_classes
from .lenet import LeNet5, LeNet300100
from .mlp import MLP
from .resnet import CifarResNet
from .vgg import VGG16


@dataclass(frozen=True)
class _Entry:
    build: Callable[..., nn.Module]  # (input_shape, num_classes, **kwargs) -> model
    defaults: Mapping[str, Any] = field(default_factory=dict)


def _registry() -> dict[str, _Entry]:
    return {
        "lenet300": _Entry(LeNet300100, {"hidden": [300, 100], "dropout": 0.0}),
        "lenet5": _Entry(LeNet5, {"padding": None}),
        "resnet20": _Entry(partial(CifarResNet, 20), {"shortcut": "A"}),
        "resnet32": _Entry(partial(CifarResNet, 32), {"shortcut": "A"}),
        "resnet44": _Entry(partial(CifarResNet, 44), {"shortcut": "A"}),
        "resnet56": _Entry(partial(CifarResNet, 56), {"shortcut": "A"}),
        "vgg16": _Entry(VGG16),
        "mlp": _Entry(MLP, {"hidden": [1024, 1024, 1024], "batchnorm": True, "activation": "tanh", "dropout": 0.0}),
    }


_ALIASES = {"lenet_300_100": "lenet300"}


def list_models() -> list[str]:
    """Canonical model names, sorted (aliases such as ``lenet_300_100`` are also accepted)."""
    return sorted(_registry())


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any
) -> nn.Module:
    """Build the zoo model ``name`` for ``input_shape`` = (C, H, W) and ``num_classes``.

    ``kwargs`` go to the model's constructor (``lenet300``: hidden, dropout; ``lenet5``:
    padding; ``resnet*``: shortcut; ``vgg16``: none). The result carries ``zoo_spec``.
    """
    registry = _registry()
    canonical = _ALIASES.get(name, name) if isinstance(name, str) else None
    if canonical not in registry:
        allowed = ", ".join(sorted([*registry, *_ALIASES]))
        raise ModelError(f"Unknown model {name!r}; available models: {allowed}.")
    entry = registry[canonical]
    unknown = sorted(set(kwargs) - set(entry.defaults))
    if unknown:
        allowed = ", ".join(entry.defaults) or "none"
        raise ModelError(
            f"Model {canonical!r} got unknown keyword argument(s) {', '.join(unknown)}; "
            f"allowed: {allowed}."
        )
    shape = check_input_shape(input_shape, canonical)
    num_classes = check_num_classes(num_classes, canonical)
    model = entry.build(shape, num_classes, **kwargs)
    model.zoo_spec = {
        "name": canonical,
        "input_shape": list(shape),
        "num_classes": num_classes,
        "kwargs": {k: _jsonable(v) for k, v in {**entry.defaults, **kwargs}.items()},
    }
    return model


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from its ``zoo_spec`` (for example read back from a file's JSON)."""
    keys = {"name", "input_shape", "num_classes", "kwargs"}
    if (
        not isinstance(spec, Mapping)
        or set(spec) != keys
        or not isinstance(spec["kwargs"], Mapping)
    ):
        raise ModelError(
            f"A model spec must be a mapping with exactly the keys {sorted(keys)} and a "
            f"mapping under 'kwargs'. Got {spec!r}."
        )
    return build_model(spec["name"], spec["input_shape"], spec["num_classes"], **spec["kwargs"])


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value
