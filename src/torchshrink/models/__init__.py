"""The model zoo: the networks the papers compress, built for any small input.

``build_model(name, input_shape, num_classes, **kwargs)`` builds ``lenet300`` (alias
``lenet_300_100``), ``lenet5``, ``resnet20``, ``resnet32``, ``resnet56`` or ``vgg16``;
each model records ``zoo_spec`` so that ``build_from_spec`` can rebuild it.
"""

from __future__ import annotations

from .lenet import LeNet5, LeNet300100
from .registry import build_from_spec, build_model, list_models
from .resnet import BasicBlock, CifarResNet, PadShortcut
from .vgg import VGG16, VGG16_CONFIG

__all__ = [
    "VGG16",
    "VGG16_CONFIG",
    "BasicBlock",
    "CifarResNet",
    "LeNet5",
    "LeNet300100",
    "PadShortcut",
    "build_from_spec",
    "build_model",
    "list_models",
]
