"""Filter pruning (Li et al. 2017, "Pruning Filters for Efficient ConvNets", §3).

For each prunable channel group of the dependency graph (:mod:`torchshrink.surgery.graph`):
score every filter by its norm, ``s_j = Σ_l Σ |F_{i,j}|`` (§3.1, eq. "sum of absolute
kernel weights"; ``norm="l2"`` uses ``sqrt(Σ F²)`` instead), summed over every producer
coupled to the channel (all convs feeding one residual stream); remove the ``m`` smallest
(``m = amount × channels``), with their feature maps, the next layers' kernels and the
batch-norm entries (§3.2) -- for real, by a :class:`~torchshrink.surgery.prune_channels.PruneChannels`
op, so the result is a smaller *dense* model whose latency falls with its MACs.

- ``strategy="independent"`` (§3.3): every layer is scored on its original weights.
  ``"greedy"``: a layer's filters are scored without the kernels of input channels
  already removed upstream (groups are visited in forward order).
- ResNets (§3.4): prune only each block's first conv with ``layers: ["layer*.*.conv1"]``.
- ``round_to``: the kept channel count is rounded to a multiple (odd counts run slower on
  some kernels), at least one multiple and never above the original count.
- One-shot: the recipe stage prunes then retrains once (``finetune``).

Sensitivity (§3.2, Fig. 2): :func:`filter_sensitivity` prunes each group alone at a grid
of fractions, without retraining, and evaluates (``torchshrink sensitivity --filters``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from ..core.params import FRACTION, Interval, OneOf, check
from ..core.select import _as_list, per_layer, unwrap
from ..core.technique import LayerStage, Step, Technique
from ..errors import ModelError
from ..surgery.graph import ChannelGroup, DependencyGraph, trace, warn_unhandled
from ..surgery.plan import apply_plan
from ..surgery.prune_channels import PruneChannels, prune_channels_op

NORMS = ("l1", "l2")
STRATEGIES = ("independent", "greedy")
ROUND_TO = Interval(int, 1, None)


def example_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """A deterministic batch of one on the model's device, for tracing."""
    p = next(unwrap(model).parameters(), None)
    x = torch.randn((1, *input_shape), generator=torch.Generator().manual_seed(0))
    return x if p is None else x.to(device=p.device, dtype=p.dtype if p.is_floating_point() else None)


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    layer = model.get_submodule(name)
    w = layer.weight.detach().float()
    if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        w = w.transpose(0, 1)
    if isinstance(layer, nn.Embedding):
        w = w.t()
    return w


def filter_norms(model: nn.Module, graph: DependencyGraph, group: ChannelGroup, norm: str = "l1",
                 removed: set[int] | None = None) -> np.ndarray:
    """Score of each atom of ``group``: the summed ``norm`` of its filters over all producers.

    ``removed``: atoms already removed upstream; their input kernels are left out (greedy).
    """
    model = unwrap(model)
    ins = {u.target: u.labels for u in graph.uses if u.role == "in"}
    cache: dict[str, torch.Tensor] = {}
    scores = np.zeros(group.size)
    for k, members in enumerate(group.members):
        for name, idx in members:
            if name not in cache:
                w = _weight(model, name)
                if removed and name in ins:
                    gone = torch.tensor([lab >= 0 and graph.root(int(lab)) in removed for lab in ins[name]])
                    if gone.any() and w.ndim >= 2 and w.shape[1] == len(gone):
                        w = w.clone()
                        w[:, gone] = 0
                flat = w.reshape(w.shape[0], -1)
                cache[name] = flat.abs().sum(1) if norm == "l1" else flat.pow(2).sum(1).sqrt()
            scores[k] += float(cache[name][idx])
    return scores


def kept_count(size: int, amount: float, round_to: int = 1, blocks: int = 1) -> int:
    """Channels kept when ``amount`` of ``size`` are pruned, rounded to a multiple of
    ``round_to`` (and of ``blocks``, for grouped layers), within ``[multiple, size]``."""
    step = int(np.lcm(round_to, blocks))
    keep = size - int(round(amount * size))
    if step > 1:
        keep = int(round(keep / step)) * step
        keep = max(step, keep) if size >= step else size
    return max(1, min(size, keep))


def choose(group: ChannelGroup, scores: np.ndarray, amount: float, round_to: int = 1) -> list[int]:
    """Atoms of ``group`` to remove: the lowest scores, the same count from each block."""
    keep = kept_count(group.size, amount, round_to, group.blocks)
    per = group.size // group.blocks
    drop_per = (group.size - keep) // group.blocks
    out: list[int] = []
    for b in range(group.blocks):
        order = np.argsort(scores[b * per:(b + 1) * per], kind="stable")[:drop_per]
        out += [group.atoms[b * per + int(i)] for i in order]
    return out


@dataclass
class FilterPlan:
    """A pruning decision: the op, the graph it came from, and per group the channels kept."""

    op: PruneChannels
    graph: DependencyGraph
    channels: dict[str, tuple[int, int]]  # group owner (first producer) -> (before, after)


def _match(name: str, patterns: Sequence[str]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def selected_groups(graph: DependencyGraph, layers: Sequence[str] | str | None,
                    exclude: Sequence[str] | str | None) -> list[ChannelGroup]:
    """Groups with a producer matching ``layers`` and none matching ``exclude`` (patterns must match)."""
    pats, excl = _as_list(layers) or ["*"], _as_list(exclude)
    producers = [p for g in graph.groups for p in g.producers]
    for pat in pats + excl:
        if not _match_any(pat, producers):
            raise ModelError(f"layer pattern {pat!r} matches no prunable layer; prunable layers are: "
                             f"{', '.join(producers) or '(none)'}")
    return [g for g in graph.groups
            if any(_match(p, pats) for p in g.producers) and not any(_match(p, excl) for p in g.producers)]


def _match_any(pat: str, names: Sequence[str]) -> bool:
    return any(_match(n, [pat]) for n in names)


def filter_prune_plan(
    model: nn.Module,
    input_shape: Sequence[int],
    amount: float | Mapping[str, float],
    *,
    layers: Sequence[str] | str | None = None,
    exclude: Sequence[str] | str | None = None,
    norm: str = "l1",
    strategy: str = "independent",
    round_to: int = 1,
    graph: DependencyGraph | None = None,
) -> FilterPlan:
    """The :class:`PruneChannels` op of Li et al. filter pruning (see the module docstring).

    ``amount``: the fraction of each selected group's channels to remove, or
    ``{layer pattern: fraction}`` matched against each group's first producer.
    """
    check(norm, "norm", "filter_prune", OneOf(NORMS))
    check(strategy, "strategy", "filter_prune", OneOf(STRATEGIES))
    check(round_to, "round_to", "filter_prune", ROUND_TO)
    model = unwrap(model)
    if graph is None:
        graph = trace(model, example_input(model, input_shape))
        warn_unhandled(graph)
    groups = selected_groups(graph, layers, exclude)
    owners = [g.producers[0] for g in groups]
    amounts = per_layer(amount, owners, "amount", lambda v, k: check(v, k, "filter_prune", FRACTION))
    removed: set[int] = set()
    channels: dict[str, tuple[int, int]] = {}
    for g, owner in zip(groups, owners):
        if owner not in amounts:
            continue
        scores = filter_norms(model, graph, g, norm, removed if strategy == "greedy" else None)
        drop = choose(g, scores, amounts[owner], round_to)
        removed.update(drop)
        channels[owner] = (g.size, g.size - len(drop))
    return FilterPlan(prune_channels_op(graph, removed), graph, channels)


@torch.no_grad()
def filter_prune(model: nn.Module, input_shape: Sequence[int], amount: float | Mapping[str, float],
                 **kwargs: Any) -> nn.Module:
    """A new, slimmer model: ``model`` with Li et al.'s smallest filters removed (``model`` is kept).

    Keyword arguments as :func:`filter_prune_plan`. The new model records the plan
    (``model.surgery``), so :func:`torchshrink.save` / ``load`` rebuild it.
    """
    fp = filter_prune_plan(model, input_shape, amount, **kwargs)
    return checked_apply(model, fp.op, input_shape)


def checked_apply(model: nn.Module, op: PruneChannels, input_shape: Sequence[int]) -> nn.Module:
    """``apply_plan`` plus one forward pass: a model whose code bakes in a channel count fails here, clearly."""
    new = apply_plan(model, [op])
    x = example_input(new, input_shape)
    was = new.training
    new.eval()
    try:
        with torch.no_grad():
            new(x)
    except RuntimeError as exc:
        msg = " ".join(str(exc).split())[:300]
        raise ModelError(f"the pruned model no longer runs ({msg}); its forward probably hard-codes a channel "
                         "count: exclude that layer's group") from None
    finally:
        new.train(was)
    return new


def channel_table(before: nn.Module, after: nn.Module) -> dict[str, list[int]]:
    """``{layer: [channels before, after]}`` for every conv/linear whose output count changed."""
    a = dict(unwrap(after).named_modules())
    out = {}
    for name, m in unwrap(before).named_modules():
        n0 = getattr(m, "out_channels", getattr(m, "out_features", None))
        m1 = a.get(name)
        n1 = getattr(m1, "out_channels", getattr(m1, "out_features", None)) if m1 is not None else None
        if n0 is not None and n1 is not None and n0 != n1:
            out[name] = [int(n0), int(n1)]
    return out


# ---------------------------------------------------------------- sensitivity (Fig. 2)
def filter_sensitivity(
    model: nn.Module,
    test_data: Any,
    input_shape: Sequence[int],
    fractions: Sequence[float],
    layers: Sequence[str] | str | None = None,
    *,
    norm: str = "l1",
    progress: bool = True,
) -> dict[str, list[dict[str, float]]]:
    """``{group owner: [{"sparsity": fraction of filters pruned, "accuracy"}, ...]}``, one group at a time."""
    from rich.progress import Progress

    from ..train import evaluate

    model = unwrap(model)
    graph = trace(model, example_input(model, input_shape))
    groups = selected_groups(graph, layers, None)
    curves: dict[str, list[dict[str, float]]] = {g.producers[0]: [] for g in groups}
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("filter sensitivity", total=len(groups) * len(fractions))
        for g in groups:
            scores = filter_norms(model, graph, g, norm)
            for f in fractions:
                check(f, "fractions", "filter_sensitivity", FRACTION)
                drop = choose(g, scores, float(f))
                trial = apply_plan(model, [prune_channels_op(graph, drop)]) if drop else copy.deepcopy(model)
                curves[g.producers[0]].append({"sparsity": float(f), "accuracy": evaluate(trial, test_data)["accuracy"]})
                bar.advance(task)
    return curves


# ---------------------------------------------------------------- the recipe stage
class FilterSpec(LayerStage):
    """Li et al. 2017 filter pruning: remove the smallest-norm filters, then retrain once."""

    technique: Literal["filters"]
    amount: FRACTION.type | dict[str, FRACTION.type] = Field(
        description="fraction of channels removed per group, or {layer pattern: fraction} (first producer)")
    norm: Literal["l1", "l2"] = Field("l1", description="filter score: l1 = Σ|F| (the paper), l2 = sqrt(ΣF²)")
    strategy: Literal["independent", "greedy"] = Field("independent", description="§3.3 scoring strategy")
    round_to: int = ROUND_TO.field(1, description="round kept channel counts to a multiple")


def _apply(ctx: Any, spec: FilterSpec, finetune: Any) -> Step:
    fp = filter_prune_plan(ctx.model, ctx.data.input_shape, spec.amount, layers=spec.layers, exclude=spec.exclude,
                           norm=spec.norm, strategy=spec.strategy, round_to=spec.round_to)
    before = ctx.model
    after = checked_apply(before, fp.op, ctx.data.input_shape)  # fails clearly before the runner applies it
    record_structure(ctx, before, after, fp.graph.warnings)
    return Step(plan=[fp.op])


def record_structure(ctx: Any, before: nn.Module, after: nn.Module, notes: list[str]) -> None:
    """Add channels before → after and MACs to the report (``ctx.extra["structured"]``)."""
    from ..measure import model_summary

    shape = ctx.data.input_shape
    m0, m1 = model_summary(before, shape)["macs_dense"], model_summary(after, shape)["macs_dense"]
    section = ctx.extra.setdefault("structured", {"stages": []})
    section["stages"].append({"stage": ctx.tag, "macs_before": m0, "macs_after": m1,
                              "macs_ratio": m0 / max(m1, 1), "channels": channel_table(before, after),
                              "left_alone": notes})


TECHNIQUE = Technique("filters", FilterSpec, _apply)
