"""One layer's compression setting and how to apply it (the search space of a policy).

A :class:`Setting` is a point of Deep Compression's per-layer space: a magnitude-pruning
sparsity (Han et al. 2015) and a k-means weight-sharing width in bits (Han et al. 2016,
§3; ``bits=None`` keeps float32 weights), optionally after a truncated-SVD factorization
of a linear layer to a fraction of its full rank (``rank``; Denton et al. 2014, the
factorization baseline of Gong et al. 2014 §3.4): the layer becomes ``first`` (in -> r)
and ``second`` (r -> out), and both factors are then pruned and shared. HAQ (Wang et al. 2019) and AMC (He et al.
2018) search such per-layer choices; torchshrink prices each one for real (file bytes by
encoding, latency with its own kernels) and scores it by the damage it does alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from ..core.params import BITS, FRACTION, Interval, check
from ..core.transform import clone
from ..factorize.svd import LowRankLinear, low_rank
from ..prune.magnitude import prune_layer
from ..quantize.kmeans import kmeans

#: A rank as a fraction of the layer's full rank ``min(out, in)`` (1 would not compress).
RANK = Interval(float, 0.0, 1.0, "neither")


@dataclass(frozen=True)
class Setting:
    """``sparsity`` (fraction of weights removed) and ``bits`` (k-means index width, None: fp32)."""

    sparsity: float = 0.0
    bits: int | None = None
    rank: float | None = None

    def __post_init__(self) -> None:
        check(self.sparsity, "sparsity", "Setting", FRACTION)
        if self.bits is not None:
            check(self.bits, "bits", "Setting", BITS)
        if self.rank is not None:
            check(self.rank, "rank", "Setting", RANK)

    @property
    def label(self) -> str:
        return (f"s{self.sparsity:g}" + (f"/b{self.bits}" if self.bits is not None else "/fp32")
                + (f"/r{self.rank:g}" if self.rank is not None else ""))

    def to_dict(self) -> dict:
        return {"sparsity": self.sparsity, "bits": self.bits, "rank": self.rank}



def grid(sparsities: Sequence[float], bits: Sequence[int | None],
         ranks: Sequence[float | None] = (None,)) -> list[Setting]:
    """Every (sparsity, bits, rank) triple, sorted."""
    triples = {Setting(float(s), None if b is None else int(b), None if r is None else float(r))
               for s in sparsities for b in bits for r in ranks}
    return sorted(triples, key=lambda x: (x.sparsity, 99 if x.bits is None else x.bits,
                                          2.0 if x.rank is None else x.rank))


def applicable(layer: nn.Module, setting: Setting) -> bool:
    """Whether ``setting`` can apply to ``layer`` (a rank only to an ``nn.Linear``)."""
    return setting.rank is None or isinstance(layer, nn.Linear)


def parts(model: nn.Module, name: str) -> list[str]:
    """The weight layers a setting of layer ``name`` changes: itself, or both factors once factorized."""
    layer = model.get_submodule(name)
    return [f"{name}.first", f"{name}.second"] if isinstance(layer, LowRankLinear) else [name]


def apply_setting(model: nn.Module, name: str, setting: Setting, *, include_bias: bool = False) -> nn.Module:
    """Prune layer ``name`` of ``model`` to ``setting.sparsity`` and share its weights at ``setting.bits`` (in place).

    A rank is surgery (a new model): :func:`applied` factorizes first, then calls this on
    the factorized layer, whose two factors are both pruned and shared.
    """
    names = parts(model, name)
    if setting.sparsity > 0:
        for part in names:
            prune_layer(model.get_submodule(part), sparsity=setting.sparsity, name=part)
    if setting.bits is not None:
        kmeans(model, dict.fromkeys(names, setting.bits), layers=names, include_bias=include_bias)
    return model


def factorized(model: nn.Module, choice: dict[str, Setting]) -> nn.Module:
    """``model`` with the layers of ``choice`` that have a rank replaced by their truncated SVD (new model)."""
    ranks = {name: s.rank for name, s in choice.items() if s.rank is not None}
    return low_rank(model, ranks) if ranks else model


def applied(model: nn.Module, choice: dict[str, Setting], *, include_bias: bool = False) -> nn.Module:
    """A copy of ``model`` with every layer of ``choice`` set (one shot, no retraining)."""
    trial = factorized(clone(model), choice)
    for name, setting in choice.items():
        apply_setting(trial, name, setting, include_bias=include_bias)
    return trial
