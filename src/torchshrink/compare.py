"""Comparison stages (Gong et al. 2014, Table 1 style): several methods, each on a copy.

Each method is a stage of any technique that changes the model; it runs (with its own
optional fine-tuning) on a copy of the current model, is saved to
``compare/<label>.tsk`` and evaluated. The main model is left as it was; the rows
(accuracy, file bytes, ratio, parameters) go to the report's ``methods`` list.
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

def _apply(ctx: Any, spec: CompareSpec, finetune: TrainConfig) -> Step:
    from .format import save
    from .stages import run_stage

    dense_bytes = state_dict_bytes(ctx.model)
    rows = []
    if spec.include_baseline:
        info = save(ctx.model, ctx.out / "compare" / f"{spec.include_baseline}.tsk")
        acc = evaluate(ctx.model, ctx.data.test)["accuracy"]
        rows.append({"method": spec.include_baseline, "technique": None, "accuracy": acc,
                     "file_bytes": info.file_bytes, "ratio": dense_bytes / info.file_bytes,
                     "params": model_summary(ctx.model, ctx.data.input_shape)["params"]})
    for j, method in enumerate(spec.methods):
        label = method.name or f"{method.technique}{j + 1}"
        branch = replace(ctx, model=clone(ctx.model), history=[], curve=[], extra={},
                         schedule={"steps": [], "sparsity": []})
        run_stage(branch, method, f"{ctx.tag}-{label}")
        info = save(branch.model, ctx.out / "compare" / f"{label}.tsk")
        acc = evaluate(branch.model, ctx.data.test)["accuracy"]
        rows.append({"method": label, "technique": method.technique, "accuracy": acc,
                     "file_bytes": info.file_bytes, "ratio": dense_bytes / info.file_bytes,
                     "params": model_summary(branch.model, ctx.data.input_shape)["params"]})
        ctx.console.print(f"{ctx.tag}: {label}: accuracy {acc:.4f}, {info.file_bytes:,} bytes "
                          f"({dense_bytes / info.file_bytes:.1f}x smaller)")
    table = ctx.extra.setdefault(spec.report_key, [])
    if not isinstance(table, list):
        raise RecipeError(f"report_key {spec.report_key!r} is already used by another stage (small_dense); "
                          "use report_key: methods")
    table.extend(rows)
    return Step(finetune=False)

TECHNIQUE = Technique("compare", CompareSpec, _apply, changes_model=False, stage_list="methods")
