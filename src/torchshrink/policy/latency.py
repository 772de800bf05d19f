"""Per-layer latency measured on this machine with torchshrink's own runtime modules, cached.

HAQ's code ships a latency table for one model and one device; here a layer's latency
under a setting is measured: the compressed layer becomes its form's runtime module (the
kernel ``load`` would use, or the plain layer where no kernel applies) and is timed at
batch 1 by :func:`torchshrink.measure.latency_ms` on the layer's own input shape. Results
are cached under :func:`torchshrink.cache_dir.cache_root` (``$TORCHSHRINK_CACHE``, else
``$XDG_CACHE_HOME/torchshrink``, else ``~/.cache/torchshrink``) under a machine
fingerprint (CPU model and flags, core count, torch and numba versions), so a second
search on the same machine does not time again.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch
from torch import nn

from ..cache_dir import cache_root
from ..core.transform import bake, packer
from ..files import atomic_write
from ..forms import form_of
from ..measure import latency_ms


def machine_fingerprint() -> str:
    """A short hash naming this machine's CPU, core count and the kernel-relevant versions."""
    import numba

    cpu = platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), cpu)
        cpu += next((ln.split(":", 1)[1] for ln in info if ln.startswith("flags")), "")
    except OSError:
        pass
    text = f"{cpu}|{os.cpu_count()}|{torch.__version__}|{numba.__version__}|{platform.machine()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_path() -> Path:
    return cache_root() / f"latency-{machine_fingerprint()}.json"


class LayerTimer:
    """Times one layer of a trial model as its runtime module; remembers results on disk."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...] | list[int]) -> None:
        self.inputs: dict[str, tuple[int, ...]] = {}
        hooks = [m.register_forward_hook(self._hook(n)) for n, m in model.named_modules()
                 if isinstance(m, (nn.Linear, nn.Conv2d))]
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, *input_shape))
        finally:
            model.train(was)
            for h in hooks:
                h.remove()
        self.path = cache_path()
        try:
            self.cache = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.cache = {}

    def _hook(self, name: str):
        def record(_m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            self.inputs[name] = tuple(inp[0].shape[1:])
        return record

    def time(self, trial: nn.Module, name: str) -> float:
        """Median batch-1 latency (ms) of layer ``name`` of ``trial`` as the runtime would run it."""
        layer = dict(trial.named_modules())[name]
        found = packer(layer)
        packed = None
        if found is not None:
            with torch.no_grad():
                packed = _numpy(found[0].pack(found[1]))
        form = "plain" if packed is None else form_of(packed).name
        nnz = int(torch.count_nonzero(layer.weight.detach()))
        key = f"{type(layer).__name__}|{tuple(layer.weight.shape)}|{self.inputs[name]}|{form}|{nnz}"
        if key not in self.cache:
            plain = bake(nn.Sequential(layer))[0]
            module = plain if packed is None else form_of(packed).runtime(plain, packed) or plain
            self.cache[key] = round(latency_ms(module, self.inputs[name], 1, repeats=30, max_seconds=1.0)["median_ms"], 6)
            self._write()
        return self.cache[key]

    def _write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(self.cache, sort_keys=True).encode())
        except OSError:
            pass  # a read-only home only loses the cache


def _numpy(value):
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value
