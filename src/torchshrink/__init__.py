"""torchshrink: make trained PyTorch networks smaller and faster, measured honestly.

    import torchshrink as ts
    data = ts.data.load_data("digits")
    model = ts.models.build_model("lenet300", data.input_shape, data.num_classes)
    ts.fit(model, data.train, ts.TrainConfig(epochs=20), test_data=data.test)
    ts.prune.magnitude(model, sparsity={"fc1": 0.93, "fc2": 0.95, "fc3": 0.75})
    print(ts.measure.model_summary(model, data.input_shape))

Submodules are imported on first use, so ``import torchshrink`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"core", "data", "factorize", "format", "forms", "hf", "measure", "models", "pipeline", "prune", "quantize",
               "recipe", "report", "runtime", "sensitivity", "surgery", "techniques", "train", "weights"}
_ATTRS = {
    "fit": ("train", "fit"),
    "evaluate": ("train", "evaluate"),
    "TrainConfig": ("train", "TrainConfig"),
    "Callback": ("train", "Callback"),
    "load_recipe": ("recipe", "load_recipe"),
    "run_recipe": ("pipeline", "run_recipe"),
    "bake": ("core.transform", "bake"),
    "save": ("format", "save"),
    "load": ("hf.saved", "load_any"),
    "compress_hf": ("hf.compress", "compress_hf"),
    "TorchshrinkError": ("errors", "TorchshrinkError"),
    "calibrate": ("runtime.dispatch", "calibrate"),
    "tt_factorize": ("factorize.tt", "tt_factorize"),
    "qcnn_quantize": ("quantize.qcnn", "qcnn_quantize"),
}

__all__ = sorted(_SUBMODULES | set(_ATTRS) | {"__version__"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _ATTRS:
        mod, attr = _ATTRS[name]
        return getattr(importlib.import_module(f".{mod}", __name__), attr)
    raise AttributeError(f"module 'torchshrink' has no attribute {name!r}")
