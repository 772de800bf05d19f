"""Low-rank factorization of linear layers by truncated SVD (Denton et al. 2014; the
factorization baseline of Gong et al. 2014 §3.4).

A weight ``W`` (``m = out`` x ``n = in``) is replaced by its best rank-``r`` approximation
in Frobenius norm (Eckart-Young), ``W ≈ U_r Σ_r V_rᵀ``, computed in float64. The layer
becomes two: ``first = V_rᵀ`` scaled (``in -> r``, no bias) then ``second = U_r`` scaled
(``r -> out``, with the bias); ``Σ_r`` is split as ``sqrt(Σ_r)`` into both factors so
they have comparable magnitudes for fine-tuning. Parameters fall from ``m n`` to
``r (m + n)``: compression rate ``m n / (r (m + n))``.

This is surgery (it changes the architecture): :func:`low_rank` builds a plan of
:class:`LowRank` ops and applies it to a copy of the model, which records the plan
(``model.surgery``, JSON ``{"op": "low_rank", "layer", "rank"}``); loading a ``.tsk`` file
replays it on a fresh model (:func:`torchshrink.surgery.replay_plan`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..core.params import Interval, check
from ..core.select import per_layer, select_layers, unwrap
from ..core.technique import LayerStage, Step, Technique
from ..errors import ModelError
from ..surgery.plan import SurgeryOp, apply_plan

RankSpec = int | float | Mapping[str, int | float]


class LowRankLinear(nn.Module):
    """``y = second(first(x))``: a rank-``r`` linear layer (``in -> r -> out``)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        check(rank, "rank", "LowRankLinear", Interval(int, 1, min(in_features, out_features)))
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, rank: int) -> LowRankLinear:
        """The truncated-SVD factorization of ``linear`` (its effective weight) at ``rank``."""
        w = linear.weight.detach()
        if not bool(torch.isfinite(w).all()):
            raise ModelError("the layer has NaN or infinite weights; fix or retrain it before factorizing")
        layer = cls(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                    device=w.device, dtype=w.dtype)
        u, s, vh = torch.linalg.svd(w.to(torch.float64), full_matrices=False)
        root = s[:rank].sqrt()
        layer.second.weight.copy_(u[:, :rank] * root)
        layer.first.weight.copy_(root.unsqueeze(1) * vh[:rank])
        if linear.bias is not None:
            layer.second.bias.copy_(linear.bias.detach())
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def dense_weight(self) -> torch.Tensor:
        """The ``out x in`` product ``second.weight @ first.weight``."""
        return self.second.weight @ self.first.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def low_rank_params(m: int, n: int, rank: int, bias: bool = True) -> int:
    """Parameters of a rank-``r`` factorization of an ``m x n`` layer: ``r (m + n)`` (+ ``m`` bias)."""
    return rank * (m + n) + (m if bias else 0)


def compression_rate_svd(m: int, n: int, rank: int) -> float:
    """Weight compression rate of rank-``r`` SVD on an ``m x n`` matrix: ``m n / (r (m + n))``
    (Gong et al. 2014 §3.4; float32 factors against a float32 matrix)."""
    if min(m, n, rank) <= 0:
        raise ModelError("compression_rate_svd needs m, n and rank > 0.")
    return m * n / (rank * (m + n))


def resolve_rank(rank: int | float, m: int, n: int, name: str = "rank") -> int:
    """An int rank in ``[1, min(m, n)]``; a float in ``(0, 1]`` is that fraction of ``min(m, n)``
    (rounded, at least 1)."""
    full = min(m, n)
    value = check(rank, name, None, Interval(int, 1, full), RANK_FRACTION)
    return value if isinstance(rank, int) else max(1, round(value * full))


RANK_FRACTION = Interval(float, 0.0, 1.0, "right")


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _linear_at(model: nn.Module, name: str) -> nn.Linear:
    if not name:
        raise ModelError("low_rank replaces layers inside a model; wrap a lone nn.Linear in nn.Sequential")
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"surgery plan names layer {name!r}, which the model does not have") from None
    if not isinstance(layer, nn.Linear):
        raise ModelError(f"low_rank needs an nn.Linear at {name!r}; found {type(layer).__name__}")
    return layer


class LowRank(SurgeryOp):
    """Surgery op: replace the ``nn.Linear`` at ``layer`` by a rank-``rank`` :class:`LowRankLinear`."""

    op: Literal["low_rank"] = "low_rank"
    layer: str
    rank: int = Field(ge=1)

    def apply(self, model: nn.Module, init: bool) -> None:
        layer = _linear_at(model, self.layer)
        r = resolve_rank(self.rank, layer.out_features, layer.in_features, f"rank[{self.layer}]")
        if init:
            new = LowRankLinear.from_linear(layer, r)
        else:
            new = LowRankLinear(layer.in_features, layer.out_features, r, bias=layer.bias is not None,
                                device=layer.weight.device, dtype=layer.weight.dtype)
        _replace(model, self.layer, new)


def low_rank_plan(
    model: nn.Module,
    rank: RankSpec,
    *,
    layers: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
) -> list[LowRank]:
    """The :class:`LowRank` ops that :func:`low_rank` applies (ranks resolved and checked)."""
    root = unwrap(model)
    if layers is None:  # every nn.Linear except the factors of earlier low-rank layers
        factored = [n for n, m in root.named_modules() if isinstance(m, LowRankLinear)]
        inner = {f"{n}.{c}" if n else c for n in factored for c in ("first", "second")}
        chosen = [(n, m) for n, m in select_layers(root, None, exclude, types=(nn.Linear,)) if n not in inner]
        if not chosen:
            raise ModelError("low_rank found no nn.Linear layer to factorize (low-rank layers are not refactorized)")
    else:
        chosen = select_layers(root, layers, exclude)
        for name, layer in chosen:
            if not isinstance(layer, nn.Linear):
                raise ModelError(
                    f"low_rank supports nn.Linear only; {name!r} is {type(layer).__name__}: exclude it from 'layers'"
                )
    ranks = per_layer(rank, [n for n, _ in chosen], "rank")
    plan = []
    for name, layer in chosen:
        if name in ranks:
            _linear_at(root, name)
            r = resolve_rank(ranks[name], layer.out_features, layer.in_features, f"rank[{name}]")
            plan.append(LowRank(layer=name, rank=r))
    return plan


@torch.no_grad()
def low_rank(
    model: nn.Module,
    rank: RankSpec,
    *,
    layers: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
) -> nn.Module:
    """A new model with the selected ``nn.Linear`` layers replaced by :class:`LowRankLinear`.

    Args:
        rank: an int, a float fraction of ``min(out, in)``, or ``{pattern: rank}`` (first
            match wins; layers no pattern covers are left alone; a pattern that matches
            no layer is an error).
        layers / exclude: layer name patterns; by default every ``nn.Linear``. Convolution
            layers are not supported yet: naming one is a :class:`ModelError`.

    The effective weight is factorized (a pruning mask on the layer is baked in and
    dropped). The result's ``surgery`` list is the input's plus one
    ``{"op": "low_rank", "layer": name, "rank": r}`` per replaced layer; ``model`` itself
    is left as it was.
    """
    return apply_plan(model, low_rank_plan(model, rank, layers=layers, exclude=exclude))


# ---------------------------------------------------------------- the recipe stage
class SVDSpec(LayerStage):
    """Low-rank factorization of linear layers by truncated SVD (the baseline of Gong et al.)."""

    technique: Literal["svd"]
    layers: list[str] | None = Field(None, description="layer name patterns; default: every nn.Linear")
    rank: (Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, le=1)]
           | dict[str, Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, le=1)]])


def _apply(ctx: Any, spec: SVDSpec, finetune: Any) -> Step:
    return Step(plan=low_rank_plan(ctx.model, spec.rank, layers=spec.layers, exclude=spec.exclude))


TECHNIQUE = Technique("svd", SVDSpec, _apply)
