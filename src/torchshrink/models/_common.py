"""Argument checks and weight initialization shared by the model zoo."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from ..errors import ModelError


def check_input_shape(input_shape: Sequence[int], owner: str) -> tuple[int, int, int]:
    """Return ``input_shape`` as a ``(channels, height, width)`` tuple of positive ints."""
    if (
        not isinstance(input_shape, (tuple, list))
        or len(input_shape) != 3
        or not all(_is_int(v) and v > 0 for v in input_shape)
    ):
        raise ModelError(
            f"The 'input_shape' parameter of {owner} must be (channels, height, width) "
            f"with positive ints. Got {input_shape!r}."
        )
    c, h, w = (int(v) for v in input_shape)
    return c, h, w


def check_num_classes(num_classes: int, owner: str) -> int:
    """Return ``num_classes`` if it is a positive int."""
    if not _is_int(num_classes) or num_classes < 1:
        raise ModelError(
            f"The 'num_classes' parameter of {owner} must be a positive int. Got {num_classes!r}."
        )
    return int(num_classes)


def check_choice(value: object, allowed: Sequence[object], param: str, owner: str) -> None:
    """Raise unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ModelError(
            f"The {param!r} parameter of {owner} must be one of "
            f"{', '.join(repr(a) for a in allowed)}. Got {value!r}."
        )


def init_weights(model: nn.Module) -> None:
    """Initialize every layer of ``model`` in place (deterministic under ``torch.manual_seed``).

    - Conv: Kaiming-normal, std = sqrt(2 / fan_out) (He et al. 2015, the fan-out form
      used by the CIFAR ResNet and VGG reference code); bias 0.
    - Linear: uniform on ±sqrt(3 / fan_in), i.e. variance 1 / fan_in: Caffe's "xavier"
      filler used by the LeNet prototxts of Han et al.; bias 0.
    - BatchNorm: weight 1, bias 0.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = math.sqrt(3.0 / m.in_features)
            nn.init.uniform_(m.weight, -bound, bound)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
