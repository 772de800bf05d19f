"""One layer's compression setting and how to apply it (the search space of a policy).

A :class:`Setting` is a point of Deep Compression's per-layer space: a magnitude-pruning
sparsity (Han et al. 2015) and a k-means weight-sharing width in bits (Han et al. 2016,
§3; ``bits=None`` keeps float32 weights). HAQ (Wang et al. 2019) and AMC (He et al.
2018) search such per-layer choices; torchshrink prices each one for real (file bytes by
encoding, latency with its own kernels) and scores it by the damage it does alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..core.params import BITS, FRACTION, check
from ..core.transform import clone
from ..prune.magnitude import prune_layer
from ..quantize.kmeans import kmeans


@dataclass(frozen=True)
class Setting:
    """``sparsity`` (fraction of weights removed) and ``bits`` (k-means index width, None: fp32)."""

    sparsity: float = 0.0
    bits: int | None = None

    def __post_init__(self) -> None:
        check(self.sparsity, "sparsity", "Setting", FRACTION)
        if self.bits is not None:
            check(self.bits, "bits", "Setting", BITS)

    @property
    def label(self) -> str:
        return f"s{self.sparsity:g}" + (f"/b{self.bits}" if self.bits is not None else "/fp32")

    def to_dict(self) -> dict:
        return {"sparsity": self.sparsity, "bits": self.bits}

def grid(sparsities: Sequence[float], bits: Sequence[int | None]) -> list[Setting]:
    """Every (sparsity, bits) pair, sorted."""
    pairs = {Setting(float(s), None if b is None else int(b)) for s in sparsities for b in bits}
    return sorted(pairs, key=lambda x: (x.sparsity, 99 if x.bits is None else x.bits))

def apply_setting(model: nn.Module, name: str, setting: Setting, *, include_bias: bool = False) -> nn.Module:
    """Prune layer ``name`` of ``model`` to ``setting.sparsity`` and share its weights at ``setting.bits`` (in place)."""
    layer = dict(model.named_modules())[name]
    if setting.sparsity > 0:
        prune_layer(layer, sparsity=setting.sparsity, name=name)
    if setting.bits is not None:
        kmeans(model, {name: setting.bits}, layers=[name], include_bias=include_bias)
    return model

def applied(model: nn.Module, choice: dict[str, Setting], *, include_bias: bool = False) -> nn.Module:
    """A copy of ``model`` with every layer of ``choice`` set (one shot, no retraining)."""
    trial = clone(model)
    for name, setting in choice.items():
        apply_setting(trial, name, setting, include_bias=include_bias)
    return trial
