"""torchvision's model builders, importable where the wheel's C++ ops do not load.

A CUDA build of torchvision beside a CPU build of torch fails to load ``_C.so``; its meta
registrations then look up two operators that do not exist and the import fails. The two
schemas are declared first (a ``torch.library`` fragment, kept alive here); the
classification models use neither. torchvision is a dev/benchmark dependency only.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

_LIBRARY: list[torch.library.Library] = []


def torchvision_models() -> ModuleType | None:
    """``torchvision.models``, or ``None`` where torchvision is not installed."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return None
    try:
        torch.ops.load_library(os.path.join(os.path.dirname(spec.origin), "_C.so"))
    except (OSError, RuntimeError):
        if not _LIBRARY:
            lib = torch.library.Library("torchvision", "FRAGMENT")
            lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            _LIBRARY.append(lib)
    import torchvision.models as models

    return models
