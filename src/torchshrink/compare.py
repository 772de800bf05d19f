"""Comparison stages (Gong et al. 2014, Table 1 style): several methods, each on a copy.

Each method is a stage of any technique that changes the model; it runs (with its own
optional fine-tuning) on a copy of the current model, is saved to
``compare/<label>.tsk`` and evaluated. The main model is left as it was; the rows
(accuracy, file bytes, ratio, parameters) go to the report's ``methods`` list.

With ``models`` the same methods also run on further zoo models, each built and trained
from scratch with the baseline's training config (Hou et al. 2017 Table 1: one MLP and
one CNN in one table); every row then names its ``model``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import Field

from .core.technique import StageSpec, Step, Technique
from .core.transform import clone
from .errors import RecipeError
from .measure import model_summary, state_dict_bytes
from .train import TrainConfig, evaluate


class CompareSpec(StageSpec):
    """Several methods, each on a copy of the current model (Gong et al. 2014 Table 1)."""

    technique: Literal["compare"]
    methods: list[Any] = Field(..., min_length=1, description="stages of other techniques, one per method")
    include_baseline: str | None = Field(None, description="label of a first row for the unchanged model (stored "
                                         "as it is), e.g. full-precision; none by default")
    report_key: Literal["methods", "comparison"] = Field("methods", description="report.json key of the rows")
    models: list[str] = Field(default_factory=list, description="further zoo models (e.g. [lenet5]) trained like "
                              "the baseline, each compared with the same methods; rows then name their model")

def _rows(ctx: Any, spec: CompareSpec, model: Any, prefix: str) -> list[dict[str, Any]]:
    """One row per method (and the baseline row) for ``model``; files under ``compare/<prefix><label>.tsk``."""
    from .format import save
    from .stages import run_stage

    dense_bytes = state_dict_bytes(model)
    rows = []
    if spec.include_baseline:
        info = save(model, ctx.out / "compare" / f"{prefix}{spec.include_baseline}.tsk")
        acc = evaluate(model, ctx.data.test)["accuracy"]
        rows.append({"method": spec.include_baseline, "technique": None, "accuracy": acc,
                     "file_bytes": info.file_bytes, "ratio": dense_bytes / info.file_bytes,
                     "params": model_summary(model, ctx.data.input_shape)["params"]})
    for j, method in enumerate(spec.methods):
        label = method.name or f"{method.technique}{j + 1}"
        branch = replace(ctx, model=clone(model), history=[], curve=[], extra={},
                         schedule={"steps": [], "sparsity": []})
        run_stage(branch, method, f"{ctx.tag}-{prefix}{label}")
        info = save(branch.model, ctx.out / "compare" / f"{prefix}{label}.tsk")
        acc = evaluate(branch.model, ctx.data.test)["accuracy"]
        rows.append({"method": label, "technique": method.technique, "accuracy": acc,
                     "file_bytes": info.file_bytes, "ratio": dense_bytes / info.file_bytes,
                     "params": model_summary(branch.model, ctx.data.input_shape)["params"]})
        ctx.console.print(f"{ctx.tag}: {prefix}{label}: accuracy {acc:.4f}, {info.file_bytes:,} bytes "
                          f"({dense_bytes / info.file_bytes:.1f}x smaller)")
    return rows


def _other_model(ctx: Any, name: str) -> Any:
    """The zoo model ``name`` for this data, trained from scratch with the baseline's config."""
    import torch

    from .models import build_model
    from .train import model_device

    torch.manual_seed(ctx.seed)
    model = build_model(name, ctx.data.input_shape, ctx.data.num_classes).to(model_device(ctx.model))
    ctx.fit(model, ctx.baseline_config, [], f"{ctx.tag}-{name}")
    ctx.console.print(f"{ctx.tag}: {name} baseline accuracy {evaluate(model, ctx.data.test)['accuracy']:.4f}")
    return model


def _apply(ctx: Any, spec: CompareSpec, finetune: TrainConfig) -> Step:
    rows = _rows(ctx, spec, ctx.model, "")
    if spec.models:
        main = (getattr(ctx.model, "zoo_spec", None) or {}).get("name", type(ctx.model).__name__)
        rows = [{"model": main, **r} for r in rows]
        for name in spec.models:
            rows += [{"model": name, **r} for r in _rows(ctx, spec, _other_model(ctx, name), f"{name}-")]
    table = ctx.extra.setdefault(spec.report_key, [])
    if not isinstance(table, list):
        raise RecipeError(f"report_key {spec.report_key!r} is already used by another stage (small_dense); "
                          "use report_key: methods")
    table.extend(rows)
    return Step(finetune=False)


TECHNIQUE = Technique("compare", CompareSpec, _apply, changes_model=False, stage_list="methods")
