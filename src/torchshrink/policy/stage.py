"""The ``policy`` stage: per-layer settings chosen by search under a budget (HAQ / AMC in spirit).

1. :func:`~.profile.profile` measures, for every selected layer and every setting of the
   grid, the damage (held-out training loss increase, the layer compressed alone) and
   the costs (real encoded bytes, energy, optionally latency on this machine).
2. :func:`~.search.knapsack` picks one setting per layer with the least predicted damage
   whose cost fits the budget (for bytes: the budget minus the file's header and the
   tensors outside the search, both measured).
3. The chosen policy is applied as Deep Compression would: iterative magnitude pruning
   with retraining to the per-layer sparsities (``prune_finetune``), then k-means weight
   sharing at the per-layer bits with centroid fine-tuning (``finetune``).
4. It is verified: the model is saved and its real file bytes, held-out loss and test
   accuracy are recorded beside the prediction. With ``compare_uniform`` the best
   *uniform* policy that fits the same budget (one setting for every layer) is run the
   same way on a copy, so the report shows what the search bought.

Everything lands in ``report.json`` under ``policy`` (the table, the front, the choice,
predicted vs measured) and ``policy.png`` plots the predicted Pareto front with the
chosen and uniform points, predicted and measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from ..core.params import BITS, FRACTION, POSITIVE_INT
from ..core.select import select_layers
from ..core.technique import LayerStage, Step, Technique
from ..core.transform import clone
from ..errors import RecipeError
from ..prune.magnitude import IterativePruning
from ..quantize.kmeans import kmeans
from ..train import TrainConfig, evaluate
from .profile import Entry, holdout, layer_tensors, profile, table_dicts
from .search import Choice, Option, knapsack, uniform
from .settings import Setting, applied, factorized, grid, parts

SPARSITIES = [0.0, 0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98]
BITS_GRID = [2, 3, 4, 5, 6, 8]
METRICS = {"budget_bytes": ("bytes", "bytes"), "budget_latency_ms": ("latency_ms", "ms"),
           "budget_energy_uj": ("energy_uj", "uJ")}

class PolicySpec(LayerStage):
    """Per-layer (sparsity, bits[, rank]) chosen by an exact knapsack search to meet a budget."""

    technique: Literal["policy"]
    budget_bytes: int | None = Field(None, gt=0, description="file bytes the model.tsk may take")
    budget_latency_ms: float | None = Field(None, gt=0, description="sum of the searched layers' batch-1 latency")
    budget_energy_uj: float | None = Field(None, gt=0, description="estimated energy of the searched layers")
    sparsities: list[FRACTION.type] = Field(default_factory=lambda: list(SPARSITIES), min_length=1)  # type: ignore[valid-type]
    bits: list[BITS.type | None] = Field(default_factory=lambda: list(BITS_GRID), min_length=1)  # type: ignore[valid-type]
    ranks: list[Annotated[float, Field(gt=0, lt=1)] | None] = Field(
        default_factory=lambda: [None], min_length=1,
        description="SVD rank grid for linear layers, fractions of the full rank (null: not factorized)")
    include_bias: bool = Field(True, description="share biases too, at the layer's bits")
    holdout: FRACTION.type = Field(0.1, description="fraction of the training split the damage is measured on")  # type: ignore[valid-type]
    iterations: int = POSITIVE_INT.field(6, description="prune -> retrain rounds")
    prune_finetune: TrainConfig | None = Field(None, description="retraining while pruning (default: the baseline's at lr/10)")
    compare_uniform: bool = Field(True, description="also run the best uniform policy under the same budget")
    margin: float = Field(0.03, ge=0.0, lt=0.5, description="fraction of a byte budget kept free by the first search")
    resolution: int = Field(4000, ge=10, le=100_000, description="cost units of the knapsack DP")

    @model_validator(mode="after")
    def _one_budget(self) -> PolicySpec:
        given = [k for k in METRICS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(METRICS)}")
        return self

    @property
    def budget(self) -> tuple[str, float, str]:
        key = next(k for k in METRICS if getattr(self, k) is not None)
        metric, unit = METRICS[key]
        return metric, float(getattr(self, key)), unit

def options_of(table: list[Entry], metric: str) -> dict[str, list[Option]]:
    out: dict[str, list[Option]] = {}
    for e in table:
        out.setdefault(e.layer, []).append(Option(e.setting, float(getattr(e, metric)), e.damage))
    return out

def prune_phase(ctx: Any, sparsity: dict[str, float], spec: PolicySpec, tag: str) -> None:
    """Iterative magnitude pruning with retraining to the per-layer ``sparsity`` (Han et al. 2015)."""
    from ..stages import finetune_config

    sparsity = {p: s for n, s in sparsity.items() if s > 0 for p in parts(ctx.model, n)}
    if not sparsity:
        return
    cfg = finetune_config(spec.prune_finetune, ctx.baseline_config)
    if cfg.epochs < spec.iterations:
        raise RecipeError(f"prune_finetune.epochs ({cfg.epochs}) must be >= iterations ({spec.iterations})")
    ctx.fit(ctx.model, cfg, [IterativePruning(sparsity, iterations=spec.iterations,
                                              epochs_per_iteration=cfg.epochs // spec.iterations,
                                              layers=list(sparsity))], f"{tag}-prune")

def share_phase(ctx: Any, bits: dict[str, int | None], spec: PolicySpec, finetune: TrainConfig, tag: str) -> None:
    """k-means weight sharing at the per-layer ``bits``, then centroid fine-tuning (Han et al. 2016 §3)."""
    bits = {p: b for n, b in bits.items() if b is not None for p in parts(ctx.model, n)}
    if bits:
        kmeans(ctx.model, bits, layers=list(bits), include_bias=spec.include_bias)
        if finetune.epochs > 0:
            ctx.fit(ctx.model, finetune, [], f"{tag}-share")

def _measure(ctx: Any, held: Any, path: Any) -> dict[str, Any]:
    from ..format import save

    info = save(ctx.model, path)
    return {"file_bytes": info.file_bytes, "heldout_loss": evaluate(ctx.model, held)["loss"],
            "accuracy": evaluate(ctx.model, ctx.data.test)["accuracy"]}

def _fixed(ctx: Any, names: list[str], spec: PolicySpec) -> int:
    """Bytes of the tensors outside the search (encoded for real)."""
    from ..format import encoded_bytes

    searched = {k for n in names for k in layer_tensors(ctx.model, n)}
    return sum(encoded_bytes(ctx.model, [k for k in encoded_bytes(ctx.model) if k not in searched]).values())

def _search_bytes(ctx: Any, options: dict[str, list[Option]], budget: float, others: int,
                  spec: PolicySpec, same: bool = False) -> tuple[Choice, list[tuple[float, float]], int]:
    """Search to a byte budget, the file header measured on the choice's own one-shot file.

    The header (JSON records) depends on the forms chosen, so it is measured for the
    current choice and the search repeated until the header no longer grows.
    ``same=True`` restricts the search to one setting for every layer.
    """
    header = _header_bytes(ctx, {}, spec)
    for _ in range(4):
        room = budget - header - others
        if room <= 0:
            raise RecipeError(f"policy: the budget {budget:g} bytes does not even cover the fixed "
                              f"{header + others} bytes (file header and tensors outside the search)")
        chosen, front = (uniform(options, room), []) if same else knapsack(options, room, spec.resolution)
        now = _header_bytes(ctx, {n: o.key for n, o in chosen.picks.items()}, spec)
        if now <= header:
            break
        header = now
    return chosen, front, header + others

def _run_policy(ctx: Any, held: Any, names: list[str], options: dict[str, list[Option]], spec: PolicySpec,
                finetune: TrainConfig, tag: str, same: bool = False) -> dict[str, Any]:
    """Search, prune + retrain, re-price the bits on the pruned weights, share + fine-tune, measure.

    The first search prices each (sparsity, bits) on the baseline weights. Retraining
    moves the weights, so after pruning the bits are searched again on the pruned,
    retrained layers: their bytes are then exact (centroid fine-tuning changes codebook
    values, not codes, so the file's size is already known) and the budget is met.
    """
    metric, budget, unit = spec.budget
    base_loss = evaluate(ctx.model, held)["loss"]
    if metric == "bytes":
        others = _fixed(ctx, names, spec)
        # the margin absorbs what retraining moves (the bits are re-priced exactly after it)
        chosen, front, fixed = _search_bytes(ctx, options, budget * (1 - spec.margin), others, spec, same)
    else:
        fixed = 0
        chosen, front = (uniform(options, budget), []) if same else knapsack(options, budget, spec.resolution)
    doc: dict[str, Any] = {"search": _choice_doc(chosen, fixed, base_loss), "front": front, "fixed": fixed}
    ctx.model = factorized(ctx.model, {n: o.key for n, o in chosen.picks.items()})  # SVD first (surgery)
    prune_phase(ctx, {n: o.key.sparsity for n, o in chosen.picks.items()}, spec, tag)
    bits = {n: o.key.bits for n, o in chosen.picks.items()}
    if metric == "bytes" and any(b is not None for b in bits.values()):
        again = profile(ctx.model, held, names, grid([0.0], spec.bits), ctx.data.input_shape,
                        include_bias=spec.include_bias, progress=ctx.progress)
        priced = options_of(again, metric)
        try:
            rebits, _, fixed2 = _search_bytes(ctx, priced, budget, _fixed(ctx, names, spec), spec, same)
        except RecipeError:  # retraining moved the weights past the budget: the cheapest bits, flagged
            rebits = Choice({n: min(o, key=lambda x: x.cost) for n, o in priced.items()}, 0.0, 0.0)
            fixed2 = _fixed(ctx, names, spec) + _header_bytes(ctx, {n: o.key for n, o in rebits.picks.items()}, spec)
            rebits = Choice(rebits.picks, sum(o.cost for o in rebits.picks.values()), 0.0)
            doc["over_budget"] = True
            ctx.console.print(f"[yellow]{tag}: after retraining no bits fit {budget:g} bytes; the cheapest bits "
                              f"are used (predicted {fixed2 + rebits.cost:,.0f} bytes)[/yellow]")
        bits = {n: o.key.bits for n, o in rebits.picks.items()}
        doc["rebits"] = {"bits": bits, "predicted_cost": fixed2 + rebits.cost}
    share_phase(ctx, bits, spec, finetune, tag)
    doc["settings"] = {n: {"sparsity": o.key.sparsity, "bits": bits[n], "rank": o.key.rank}
                       for n, o in chosen.picks.items()}
    return doc

def _apply(ctx: Any, spec: PolicySpec, finetune: TrainConfig) -> Step:
    metric, budget, unit = spec.budget
    names = [n for n, _ in select_layers(ctx.model, spec.layers, spec.exclude)]
    held = holdout(ctx.data.train, spec.holdout, ctx.seed)
    table = profile(ctx.model, held, names, grid(spec.sparsities, spec.bits, spec.ranks), ctx.data.input_shape,
                    include_bias=spec.include_bias, latency=metric == "latency_ms", progress=ctx.progress)
    options = options_of(table, metric)
    base_loss = evaluate(ctx.model, held)["loss"]
    doc: dict[str, Any] = {"metric": metric, "budget": budget, "unit": unit, "layers": names,
                           "heldout": {"examples": len(held), "baseline_loss": base_loss},
                           "table": table_dicts(table)}
    if spec.compare_uniform:
        branch = replace(ctx, model=clone(ctx.model), history=[], curve=[], extra={},
                         schedule={"steps": [], "sparsity": []})
        try:
            flat = _run_policy(branch, held, names, options, spec, finetune, f"{ctx.tag}-uniform", same=True)
        except RecipeError as exc:
            doc["uniform"] = {"error": str(exc)}
        else:
            flat.pop("front")
            doc["uniform"] = {**flat, "measured": _measure(branch, held, ctx.out / "compare" / "uniform.tsk")}
    chosen = _run_policy(ctx, held, names, options, spec, finetune, ctx.tag)
    doc["front"] = [{"cost": chosen["fixed"] + c, "predicted_loss": base_loss + d} for c, d in chosen.pop("front")]
    doc["chosen"] = {**chosen, "measured": _measure(ctx, held, ctx.out / "policy" / "chosen.tsk")}
    ctx.console.print(f"{ctx.tag}: policy for {budget:g} {unit}: " + ", ".join(
        f"{n} s{s['sparsity']:g}/b{s['bits']}" + (f"/r{s['rank']:g}" if s["rank"] is not None else "")
        for n, s in doc["chosen"]["settings"].items()))
    ctx.extra["policy"] = doc
    _plot(doc, ctx.out / "policy.png")
    return Step(finetune=False)

def _header_bytes(ctx: Any, choice: dict[str, Setting], spec: PolicySpec) -> int:
    """Header bytes of the file of ``ctx.model`` with ``choice`` applied one shot (written, measured, removed)."""
    from ..format import save

    path = ctx.out / "policy" / "probe.tsk"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return save(applied(ctx.model, choice, include_bias=spec.include_bias), path).header_bytes
    finally:
        path.unlink(missing_ok=True)

def _choice_doc(choice: Choice, fixed: float, base_loss: float) -> dict[str, Any]:
    return {"settings": {n: o.key.to_dict() for n, o in choice.picks.items()},
            "predicted_cost": fixed + choice.cost, "predicted_loss": base_loss + choice.damage}

def _plot(doc: dict[str, Any], path: Any) -> None:
    from ..plots import figure, save_figure

    fig, ax = figure(6, 4)
    ax.plot([p["cost"] for p in doc["front"]], [p["predicted_loss"] for p in doc["front"]], "-", color="0.6",
            label="predicted front (layers alone, no retraining)")
    for key, color in (("chosen", "C0"), ("uniform", "C1")):
        if key in doc:
            d = doc[key]
            if "search" not in d:
                continue
            ax.plot([d["search"]["predicted_cost"]], [d["search"]["predicted_loss"]], "o", mfc="none", color=color,
                    label=f"{key}, predicted")
            if "measured" in d and doc["metric"] == "bytes":
                m = d["measured"]
                ax.plot([m["file_bytes"]], [m["heldout_loss"]], "o", color=color,
                        label=f"{key}, measured after fine-tuning (test acc {m['accuracy']:.2%})")
    ax.axvline(doc["budget"], color="k", lw=0.8, ls="--", label="budget")
    ax.set_xlabel(f"{doc['metric']} ({doc['unit']})")
    ax.set_ylabel("held-out training loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def summary(report: Mapping[str, Any]) -> Any:
    """The chosen settings vs the best uniform ones: predicted and measured cost, held-out loss, accuracy."""
    doc = report.get("policy")
    if not isinstance(doc, Mapping) or "chosen" not in doc:
        return None
    from rich.table import Table

    runs = [k for k in ("chosen", "uniform") if isinstance(doc.get(k), Mapping) and "settings" in doc[k]]
    t = Table(title=f"policy: per-layer settings for {doc['budget']:,.6g} {doc['unit']}")
    t.add_column("")
    for k in runs:
        t.add_column(k, justify="right")

    def label(s: Mapping[str, Any]) -> str:
        return (f"{s['sparsity']:.0%} pruned, " + ("fp32" if s["bits"] is None else f"{s['bits']} bits")
                + ("" if s.get("rank") is None else f", rank {s['rank']:g}"))

    for layer in doc["chosen"]["settings"]:
        t.add_row(layer, *(label(doc[k]["settings"][layer]) for k in runs))
    t.add_row(f"predicted {doc['metric']}", *(f"{doc[k]['search']['predicted_cost']:,.0f}" for k in runs))
    if doc["metric"] == "bytes":
        t.add_row("file bytes measured", *(f"{doc[k]['measured']['file_bytes']:,}" for k in runs))
    t.add_row("held-out loss", *(f"{doc[k]['measured']['heldout_loss']:.4f}" for k in runs))
    t.add_row("test accuracy", *(f"{doc[k]['measured']['accuracy']:.2%}" for k in runs))
    return t


TECHNIQUE = Technique("policy", PolicySpec, _apply, summary=summary)
