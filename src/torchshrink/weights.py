"""Plain weight files: a safetensors file of the effective fp32 weights plus metadata.

Used for baselines (``baseline: {load: ...}``) and for the dense result of a run, which
``torchshrink eval`` and ``inspect`` can read. Reading never executes code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ModelError, TorchshrinkError
from .files import atomic_write
from .models import build_from_spec
from .core.transform import effective_state_dict


class WeightsFileError(TorchshrinkError, ValueError):
    """A weights file is missing, malformed or does not fit the model."""


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write the effective state dict of ``model`` (atomically) with JSON metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "torchshrink-weights/1"}
    spec = getattr(model, "zoo_spec", None)
    if spec is not None:
        meta["zoo_spec"] = json.dumps(spec)
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    tensors = {k: v.detach().cpu().contiguous() for k, v in effective_state_dict(model).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors weights file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file {str(path)!r} does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsFileError(f"{path} is not a readable safetensors file: {e}") from None
    return tensors, meta


def load_into(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a weights file into ``model`` (plain, unparametrized); shape errors name the key."""
    tensors, _ = read_weights(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise WeightsFileError(
            f"{path} does not fit the model: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'…' if len(extra) > 5 else ''}")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise WeightsFileError(f"{path}: {k} has shape {tuple(v.shape)}, the model needs {tuple(own[k].shape)}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise WeightsFileError(f"{path}: {k} contains NaN or infinite values")
    model.load_state_dict(tensors)
    return model


def model_from_weights(path: str | Path) -> tuple[nn.Module, dict[str, str]]:
    """Rebuild a zoo model from a weights file's metadata and load its weights."""
    _, meta = read_weights(path)
    if "zoo_spec" not in meta:
        raise WeightsFileError(f"{path} has no architecture metadata (zoo_spec); load it into your own model")
    try:
        model = build_from_spec(json.loads(meta["zoo_spec"]))
    except (ModelError, json.JSONDecodeError) as e:
        raise WeightsFileError(f"{path}: bad architecture metadata: {e}") from None
    return load_into(model, path), meta
