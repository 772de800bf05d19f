"""Low-rank factorization of linear layers by truncated SVD (Denton et al. 2014; the
factorization baseline of Gong et al. 2014 §3.4).

A weight ``W`` (``m = out`` x ``n = in``) is replaced by its best rank-``r`` approximation
in Frobenius norm (Eckart-Young), ``W ≈ U_r Σ_r V_rᵀ``, computed in float64. The layer
becomes two: ``first = V_rᵀ`` scaled (``in -> r``, no bias) then ``second = U_r`` scaled
(``r -> out``, with the bias); ``Σ_r`` is split as ``sqrt(Σ_r)`` into both factors so
they have comparable magnitudes for fine-tuning. Parameters fall from ``m n`` to
``r (m + n)``: compression rate ``m n / (r (m + n))``.

This is surgery (it changes the architecture), so :func:`low_rank` records a JSON-able
plan on the model (``model.surgery``, a list of ``{"op": "low_rank", "layer", "rank"}``);
:func:`apply_surgery` replays it on a fresh model so that saved weights can be loaded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..selection import select_layers, unwrap

RankSpec = int | float | Mapping[str, int | float]


class LowRankLinear(nn.Module):
    """``y = second(first(x))``: a rank-``r`` linear layer (``in -> r -> out``)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device: Any = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(in_features, out_features):
            raise ModelError(
                f"The 'rank' parameter must be an int in [1, {min(in_features, out_features)}]. Got {rank!r} instead."
            )
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
    if isinstance(rank, bool):
        pass
    elif isinstance(rank, int):
        if 1 <= rank <= full:
            return rank
    elif isinstance(rank, float) and 0.0 < rank <= 1.0:
        return max(1, round(rank * full))
    raise ModelError(
        f"The '{name}' parameter must be an int in [1, {full}] or a float in (0, 1]. Got {rank!r} instead."
    )


def _rank_for(name: str, rank: RankSpec) -> int | float | None:
    if isinstance(rank, Mapping):
        return next((v for p, v in rank.items() if fnmatchcase(name, p)), None)
    return rank


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _record(model: nn.Module, entries: list[dict[str, Any]]) -> None:
    plan = getattr(model, "surgery", None)
    if plan is None:
        plan = []
        model.surgery = plan
    plan.extend(entries)


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


@torch.no_grad()
def low_rank(
    model: nn.Module,
    rank: RankSpec,
    *,
    layers: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
) -> nn.Module:
    """Replace the selected ``nn.Linear`` layers by :class:`LowRankLinear` (in place).

    Args:
        rank: an int, a float fraction of ``min(out, in)``, or ``{pattern: rank}`` (first
            match wins; layers no pattern covers are left alone).
        layers / exclude: layer name patterns; by default every ``nn.Linear``. Convolution
            layers are not supported yet: naming one is a :class:`ModelError`.

    The effective weight is factorized (a pruning mask on the layer is baked in and
    dropped). Appends ``{"op": "low_rank", "layer": name, "rank": r}`` per replaced
    layer to ``model.surgery``.
    """
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
    plan = []
    for name, layer in chosen:
        r = _rank_for(name, rank)
        if r is not None:
            _linear_at(root, name)
            plan.append((name, layer, resolve_rank(r, layer.out_features, layer.in_features, f"rank[{name}]")))
    entries = []
    for name, layer, r in plan:
        _replace(root, name, LowRankLinear.from_linear(layer, r))
        entries.append({"op": "low_rank", "layer": name, "rank": r})
    _record(root, entries)
    return model


def apply_surgery(model: nn.Module, plan: Sequence[Mapping[str, Any]]) -> nn.Module:
    """Replay a ``model.surgery`` plan on a fresh model (in place): rebuild the shapes only.

    Every ``low_rank`` entry turns the named ``nn.Linear`` into a :class:`LowRankLinear`
    of the recorded rank (no SVD; the weights are meant to be loaded afterwards). The
    entries are appended to the model's own ``surgery`` list.
    """
    root = unwrap(model)
    entries = []
    for i, entry in enumerate(plan):
        if not isinstance(entry, Mapping) or entry.get("op") != "low_rank":
            op = entry.get("op") if isinstance(entry, Mapping) else entry
            raise ModelError(f"surgery step {i} has op {op!r}; this function replays 'low_rank' steps only")
        name, r = entry.get("layer"), entry.get("rank")
        if not isinstance(name, str):
            raise ModelError(f"surgery step {i} needs a 'layer' name string. Got {name!r}.")
        layer = _linear_at(root, name)
        r = resolve_rank(r, layer.out_features, layer.in_features, f"rank[{name}]")
        new = LowRankLinear(layer.in_features, layer.out_features, r, bias=layer.bias is not None,
                            device=layer.weight.device, dtype=layer.weight.dtype)
        _replace(root, name, new)
        entries.append({"op": "low_rank", "layer": name, "rank": r})
    _record(root, entries)
    return model
