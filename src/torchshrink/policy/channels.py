"""The ``amc`` stage: per-group channel fractions chosen under a MAC or latency budget (AMC in spirit).

AMC (He et al. 2018, "AMC: AutoML for Model Compression") searches each layer's channel
keep-ratio with a reinforcement-learning agent under a FLOPs or latency constraint, the
reward measured on the device. torchshrink searches the same space directly, with the
costs measured rather than learned:

1. **Sensitivity** (Li et al. 2017 §3.2, Fig. 2), on a held-back part of the *training*
   split (never the test split): every prunable channel group of the dependency graph
   (:mod:`torchshrink.surgery.graph`) alone loses the smallest-norm fraction ``f`` of its
   channels, one shot; damage = the held-out loss increase. Under ``torchrun`` the
   (group, fraction) items are split across ranks and gathered (:func:`.profile.measured`).
2. **Cost.** The MACs of a choice, from the graph: a conv or linear layer's MACs scale
   with the fraction of its output channels kept times the fraction of its input channels
   (or features, after a flatten) kept; a depthwise conv's with one of them. The two
   fractions multiply, so adjacent groups' costs are *not* additive and the search is
   greedy (the issue: "exact where costs are additive, greedy otherwise").
3. **Greedy search.** From nothing pruned, repeatedly advance by one grid step the group
   whose step costs the least predicted damage per MAC saved, until the budget is met.
   For a latency budget the pruned model is built after each step and its batch-1
   latency measured on this machine (hardware in the loop); the search stops when it fits.
4. **Apply and verify.** The choice becomes one :class:`~torchshrink.surgery.prune_channels.PruneChannels`
   op (recorded in the ``.tsk`` file, replayed on load), the model is fine-tuned, and the
   measured MACs, latency, held-out loss and test accuracy are recorded beside the
   prediction. With ``compare_uniform`` the smallest *uniform* fraction (one for every
   group) that meets the same budget runs the same way on a copy.

Everything lands in ``report.json`` under ``amc``; ``amc.png`` plots the greedy path with
the chosen and uniform points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator
from torch import nn

from ..core.params import FRACTION
from ..core.select import unwrap
from ..core.technique import LayerStage, Step, Technique
from ..core.transform import clone
from ..errors import RecipeError
from ..measure import latency_ms, layer_stats, model_summary
from ..prune.filters import (
    ROUND_TO,
    checked_apply,
    choose,
    example_input,
    filter_norms,
    record_structure,
    selected_groups,
)
from ..surgery.graph import ChannelGroup, DependencyGraph, trace, warn_unhandled
from ..surgery.plan import apply_plan
from ..surgery.prune_channels import PruneChannels, prune_channels_op
from ..train import TrainConfig, evaluate
from .profile import DIGITS, holdout, measured

FRACTIONS = [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75]
#: Uniform fractions tried for the comparison (the smallest that meets the budget wins).
UNIFORM = [round(0.025 * i, 3) for i in range(39)]


class AMCSpec(LayerStage):
    """Per-group channel fractions chosen by a greedy search to meet a MAC or latency budget."""

    technique: Literal["amc"]
    budget_macs: float | None = Field(None, gt=0, lt=1, description="fraction of the baseline MACs the model keeps")
    budget_latency_ms: float | None = Field(None, gt=0, description="batch-1 latency of the model on this machine")
    fractions: list[FRACTION.type] = Field(default_factory=lambda: list(FRACTIONS), min_length=2)  # type: ignore[valid-type]
    norm: Literal["l1", "l2"] = Field("l1", description="filter score (Li et al.): l1 = Σ|F|, l2 = sqrt(ΣF²)")
    round_to: int = ROUND_TO.field(1, description="round kept channel counts to a multiple")
    holdout: FRACTION.type = Field(0.1, description="fraction of the training split the damage is measured on")  # type: ignore[valid-type]
    compare_uniform: bool = Field(True, description="also run the best uniform fraction under the same budget")

    @model_validator(mode="after")
    def _one_budget(self) -> AMCSpec:
        if (self.budget_macs is None) == (self.budget_latency_ms is None):
            raise ValueError("give exactly one of budget_macs, budget_latency_ms")
        if 0.0 not in self.fractions:
            self.fractions = [0.0, *self.fractions]
        self.fractions = sorted(set(self.fractions))
        return self


# ---------------------------------------------------------------- the MAC model
def _roots(graph: DependencyGraph, labels: np.ndarray) -> np.ndarray:
    return np.array([graph.root(int(lab)) if lab >= 0 else -1 for lab in labels.reshape(-1)], dtype=np.int64)


@dataclass
class MacModel:
    """MACs of the model with channel atoms removed, from the dependency graph (see the module doc).

    ``terms``: per conv/linear layer its dense MACs, the roots of its output channels and of
    its input channels (``None`` where the graph records none: nothing is removed there),
    and whether the two fractions multiply (``False`` for a depthwise conv).
    """

    terms: list[tuple[str, float, np.ndarray | None, np.ndarray | None, bool]]
    total: float

    @classmethod
    def of(cls, model: nn.Module, graph: DependencyGraph, input_shape: Sequence[int]) -> MacModel:
        model = unwrap(model)
        macs = {s.name: float(s.macs_dense) for s in layer_stats(model, input_shape)}
        uses: dict[tuple[str, str], np.ndarray] = {}
        for u in graph.uses:
            uses.setdefault((u.target, u.role), _roots(graph, u.labels))
        terms = []
        for name, m in macs.items():
            layer = model.get_submodule(name)
            out = uses.get((name, "out"))
            inp = uses.get((name, "in"))
            both = True
            if out is None and (name, "channel") in uses:  # grouped / depthwise: input and output channels are one
                out = uses[(name, "channel")]
                depthwise = getattr(layer, "groups", 1) == getattr(layer, "in_channels", 0)
                inp, both = (None, False) if depthwise else (out, True)
            terms.append((name, m, out, inp, both))
        return cls(terms, sum(macs.values()))

    def macs(self, removed: set[int]) -> float:
        """MACs with the atoms ``removed`` (roots) gone."""
        if not removed:
            return self.total
        gone = np.fromiter(removed, dtype=np.int64)
        total = 0.0
        for _, m, out, inp, _both in self.terms:
            f = 1.0
            for roots in (out, inp):
                if roots is not None and roots.size:
                    f *= 1.0 - float(np.isin(roots, gone).mean())
            total += m * f
        return total


# ---------------------------------------------------------------- sensitivity and search
@dataclass
class Groups:
    """The searched groups: per group its owner (first producer) and its removal order."""

    graph: DependencyGraph
    groups: list[ChannelGroup]
    scores: list[np.ndarray]
    round_to: int

    @property
    def owners(self) -> list[str]:
        return [g.producers[0] for g in self.groups]

    def dropped(self, k: int, fraction: float) -> list[int]:
        return choose(self.groups[k], self.scores[k], fraction, self.round_to) if fraction > 0 else []

    def removed(self, fractions: Sequence[float]) -> set[int]:
        out: set[int] = set()
        for k, f in enumerate(fractions):
            out.update(self.dropped(k, f))
        return out

    def op(self, fractions: Sequence[float]) -> PruneChannels:
        return prune_channels_op(self.graph, sorted(self.removed(fractions)))


def searched_groups(model: nn.Module, input_shape: Sequence[int], spec: AMCSpec) -> Groups:
    model = unwrap(model)
    graph = trace(model, example_input(model, input_shape))
    warn_unhandled(graph)
    groups = selected_groups(graph, spec.layers, spec.exclude)
    if not groups:
        raise RecipeError("amc: no prunable channel group matches the stage's layers")
    return Groups(graph, groups, [filter_norms(model, graph, g, spec.norm) for g in groups], spec.round_to)


def sensitivity(model: nn.Module, held: Any, gs: Groups, fractions: Sequence[float], *,
                progress: bool = True) -> dict[str, list[dict[str, float]]]:
    """``{owner: [{"fraction", "damage", "loss", "accuracy"}, ...]}``, each group pruned alone on ``held``."""
    base = evaluate(model, held)["loss"]
    items = [(k, float(f)) for k in range(len(gs.groups)) for f in fractions]

    def one(item: tuple[int, float]) -> dict[str, float]:
        k, f = item
        drop = gs.dropped(k, f)
        trial = apply_plan(unwrap(model), [prune_channels_op(gs.graph, drop)]) if drop else model
        ev = evaluate(trial, held)
        return {"fraction": f, "damage": round(ev["loss"] - base, DIGITS), "loss": round(ev["loss"], DIGITS),
                "accuracy": ev["accuracy"]}

    rows = measured(items, one, description="amc: measuring groups x fractions", progress=progress)
    out: dict[str, list[dict[str, float]]] = {o: [] for o in gs.owners}
    for (k, _), row in zip(items, rows):
        out[gs.owners[k]].append(row)
    return out


@dataclass
class Search:
    """The greedy search's result: a fraction per group, its predicted cost and loss, and the path."""

    fractions: list[float]
    macs: float
    predicted_loss: float | None
    path: list[dict[str, float]]
    latency_ms: float | None = None


def greedy(gs: Groups, table: dict[str, list[dict[str, float]]], macs: MacModel, base_loss: float,
           fits: Any) -> Search:
    """Advance one group one grid step at a time, least damage per MAC saved first, until ``fits``.

    ``fits(fractions, macs) -> (ok, latency or None)`` is the budget test (MACs, or a
    measured latency). Damage increments are clipped at 0 (a step that lowers the held-out
    loss is free, not a reward), so the path's predicted loss never falls.
    """
    grid = [[r["fraction"] for r in table[o]] for o in gs.owners]
    damage = [[max(0.0, r["damage"]) for r in table[o]] for o in gs.owners]
    step = [0] * len(gs.groups)
    frac = [0.0] * len(gs.groups)
    cost, loss = macs.total, base_loss
    ok, lat = fits(frac, cost)
    path = [{"macs": cost, "predicted_loss": loss, **({} if lat is None else {"latency_ms": lat})}]
    while not ok:
        best: tuple[float, int, float] | None = None
        for k in range(len(step)):
            if step[k] + 1 >= len(grid[k]):
                continue
            trial = [*frac]
            trial[k] = grid[k][step[k] + 1]
            c = macs.macs(gs.removed(trial))
            saved = cost - c
            if saved <= 0:
                continue
            per = max(0.0, damage[k][step[k] + 1] - damage[k][step[k]]) / saved
            if best is None or per < best[0]:
                best = (per, k, c)
        if best is None:
            raise RecipeError(f"amc: the budget cannot be met: with every group at its largest fraction "
                              f"({max(g[-1] for g in grid):g}) the model keeps {cost / macs.total:.1%} of its MACs"
                              + ("" if lat is None else f" and runs in {lat:.3f} ms"))
        _, k, cost = best
        step[k] += 1
        loss += damage[k][step[k]] - damage[k][step[k] - 1]
        frac[k] = grid[k][step[k]]
        ok, lat = fits(frac, cost)
        path.append({"macs": cost, "predicted_loss": loss, **({} if lat is None else {"latency_ms": lat})})
    return Search(frac, cost, loss, path, lat)


def _latency(model: nn.Module, input_shape: Sequence[int], batch: int = 1) -> float:
    return float(latency_ms(model, input_shape, batch, repeats=30, max_seconds=1.0)["median_ms"])


def budget_test(model: nn.Module, gs: Groups, macs: MacModel, spec: AMCSpec, input_shape: Sequence[int]) -> Any:
    """The ``fits`` of :func:`greedy`: MACs under ``budget_macs`` × baseline, or measured latency under ``budget_latency_ms``."""
    if spec.budget_macs is not None:
        limit = spec.budget_macs * macs.total
        return lambda fractions, cost: (cost <= limit, None)

    def fits(fractions: Sequence[float], cost: float) -> tuple[bool, float]:
        removed = gs.removed(fractions)
        trial = apply_plan(unwrap(model), [prune_channels_op(gs.graph, sorted(removed))]) if removed else model
        lat = _latency(trial, input_shape)
        return lat <= float(spec.budget_latency_ms), round(lat, 4)
    return fits


def uniform(gs: Groups, macs: MacModel, fits: Any) -> Search:
    """The smallest single fraction for every group that meets the budget."""
    for f in UNIFORM:
        frac = [f] * len(gs.groups)
        cost = macs.macs(gs.removed(frac))
        ok, lat = fits(frac, cost)
        if ok:
            return Search(frac, cost, None, [], lat)
    raise RecipeError(f"amc: no uniform fraction up to {UNIFORM[-1]:g} meets the budget")


# ---------------------------------------------------------------- the recipe stage
def _run(ctx: Any, gs: Groups, search: Search, finetune: TrainConfig, held: Any, tag: str) -> dict[str, Any]:
    """Prune ``ctx.model`` to ``search.fractions`` (for real), fine-tune, measure."""
    before = ctx.model
    op = gs.op(search.fractions)
    ctx.model = checked_apply(before, op, ctx.data.input_shape)
    if finetune.epochs > 0:
        ctx.fit(ctx.model, finetune, [], tag)
    shape = ctx.data.input_shape
    got = {"macs": int(model_summary(ctx.model, shape)["macs_dense"]),
           "latency_ms_b1": round(_latency(ctx.model, shape, 1), 4),
           "latency_ms_b64": round(_latency(ctx.model, shape, 64), 4),
           "heldout_loss": evaluate(ctx.model, held)["loss"],
           "accuracy": evaluate(ctx.model, ctx.data.test)["accuracy"]}
    return {"fractions": dict(zip(gs.owners, search.fractions)), "predicted_macs": search.macs,
            "predicted_loss": search.predicted_loss, "predicted_latency_ms": search.latency_ms,
            "measured": got, "op": op, "before": before}


def _apply(ctx: Any, spec: AMCSpec, finetune: TrainConfig) -> Step:
    shape = ctx.data.input_shape
    held = holdout(ctx.data.train, spec.holdout, ctx.seed)
    gs = searched_groups(ctx.model, shape, spec)
    macs = MacModel.of(ctx.model, gs.graph, shape)
    base_loss = evaluate(ctx.model, held)["loss"]
    table = sensitivity(ctx.model, held, gs, spec.fractions, progress=ctx.progress)
    fits = budget_test(ctx.model, gs, macs, spec, shape)
    chosen = greedy(gs, table, macs, base_loss, fits)
    metric, budget = (("macs", spec.budget_macs * macs.total) if spec.budget_macs is not None
                      else ("latency_ms", float(spec.budget_latency_ms)))
    doc: dict[str, Any] = {"metric": metric, "budget": budget, "baseline_macs": macs.total,
                           "baseline_latency_ms_b1": round(_latency(ctx.model, shape), 4),
                           "heldout": {"examples": len(held), "baseline_loss": base_loss},
                           "table": table, "path": chosen.path}
    if spec.compare_uniform:
        flat = uniform(gs, macs, fits)
        branch = replace(ctx, model=clone(ctx.model), history=[], curve=[], extra={},
                         schedule={"steps": [], "sparsity": []})
        run = _run(branch, gs, flat, finetune, held, f"{ctx.tag}-uniform")
        doc["uniform"] = {k: v for k, v in run.items() if k not in ("op", "before")}
    run = _run(ctx, gs, chosen, finetune, held, ctx.tag)
    record_structure(ctx, run["before"], ctx.model, gs.graph.warnings)
    doc["chosen"] = {k: v for k, v in run.items() if k not in ("op", "before")}
    ctx.console.print(f"{ctx.tag}: channel fractions for {budget:,.6g} {metric}: " + ", ".join(
        f"{o} {f:g}" for o, f in doc["chosen"]["fractions"].items() if f > 0))
    ctx.extra["amc"] = doc
    _plot(doc, ctx.out / "amc.png")
    return Step(finetune=False)


def _plot(doc: dict[str, Any], path: Any) -> None:
    from ..plots import figure, save_figure

    base = doc["baseline_macs"]
    fig, ax = figure(6, 4)
    ax.plot([p["macs"] / base for p in doc["path"]], [p["predicted_loss"] for p in doc["path"]], ".-", color="0.6",
            label="greedy path (groups alone, no retraining)")
    for key, color in (("chosen", "C0"), ("uniform", "C1")):
        if key in doc:
            m = doc[key]["measured"]
            ax.plot([m["macs"] / base], [m["heldout_loss"]], "o", color=color,
                    label=f"{key}, measured after fine-tuning (test acc {m['accuracy']:.2%})")
    if doc["metric"] == "macs":
        ax.axvline(doc["budget"] / base, color="k", lw=0.8, ls="--", label="budget")
    ax.set_xlabel("MACs kept (fraction of the baseline)")
    ax.set_ylabel("held-out training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def summary(report: Mapping[str, Any]) -> Any:
    """The chosen fractions vs the uniform one: predicted and measured MACs, latency, accuracy."""
    doc = report.get("amc")
    if not isinstance(doc, Mapping) or "chosen" not in doc:
        return None
    from rich.table import Table

    runs = [k for k in ("chosen", "uniform") if k in doc]
    base = doc["baseline_macs"]
    t = Table(title=f"amc: channel fractions for {doc['budget']:,.6g} {doc['metric']} "
                    f"(baseline {base:,.0f} MACs, {doc['baseline_latency_ms_b1']:.3f} ms at batch 1)")
    t.add_column("")
    for k in runs:
        t.add_column(k, justify="right")
    for owner in doc["chosen"]["fractions"]:
        t.add_row(f"{owner} removed", *(f"{doc[k]['fractions'][owner]:.1%}" for k in runs))
    rows = (("MACs predicted", lambda d: f"{d['predicted_macs'] / base:.1%}"),
            ("MACs measured", lambda d: f"{d['measured']['macs'] / base:.1%}"),
            ("latency batch 1", lambda d: f"{d['measured']['latency_ms_b1']:.3f} ms"),
            ("latency batch 64", lambda d: f"{d['measured']['latency_ms_b64']:.3f} ms"),
            ("held-out loss", lambda d: f"{d['measured']['heldout_loss']:.4f}"),
            ("test accuracy", lambda d: f"{d['measured']['accuracy']:.2%}"))
    for label, cell in rows:
        t.add_row(label, *(cell(doc[k]) for k in runs))
    return t


TECHNIQUE = Technique("amc", AMCSpec, _apply, summary=summary)
