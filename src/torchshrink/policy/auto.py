"""``torchshrink auto``: a recipe turned into a budgeted policy run.

The recipe's baseline and fine-tuning schedules are kept; its stages are replaced by one
search stage:

- a byte or energy budget, or a latency budget on an unstructured recipe: one ``policy``
  stage (per-layer sparsity and k-means bits, :mod:`.stage`);
- a MAC budget, or a latency budget on a structured recipe (one with a ``filters``,
  ``ssl`` or ``amc`` stage): one ``amc`` stage (per-group channel fractions,
  :mod:`.channels`), which keeps the filter stage's layers, norm and fine-tuning.

A recipe that already has the search stage only gets the new budget.
"""

from __future__ import annotations

from typing import Any

from ..errors import RecipeError
from ..recipe import Recipe, parse_recipe
from .stage import METRICS


#: Budgets the ``amc`` stage takes.
AMC_BUDGETS = ("budget_macs", "budget_latency_ms")
STRUCTURED = ("filters", "ssl", "amc")


def auto_recipe(recipe: Recipe, budget: dict[str, float]) -> Recipe:
    """``recipe`` with its stages made one search stage under ``budget`` (see the module doc)."""
    given = {k: v for k, v in budget.items() if v is not None}
    keys = [*METRICS, *(k for k in AMC_BUDGETS if k not in METRICS)]
    if len(given) != 1 or next(iter(given)) not in keys:
        raise RecipeError(f"give exactly one budget: {', '.join('--' + k.replace('_', '-') for k in keys)}")
    data = recipe.model_dump(mode="json", exclude_none=True)
    stages: list[dict[str, Any]] = data.get("stages", [])
    key = next(iter(given))
    if key == "budget_macs" or (key == "budget_latency_ms" and any(s["technique"] in STRUCTURED for s in stages)):
        data["stages"] = [_amc_stage(stages, given)]
        data["name"] = f"{recipe.name}-auto"
        return parse_recipe(data, f"{recipe.name} (auto)")
    policies = [s for s in stages if s["technique"] == "policy"]
    if policies:
        for s in policies:
            for k in METRICS:
                s.pop(k, None)
            s.update(given)
    else:
        prune = next((s for s in stages if s["technique"] in ("magnitude", "agp")), None)
        share = next((s for s in stages if s["technique"] == "kmeans"), None)
        policy: dict[str, Any] = {"technique": "policy", "name": "auto", **given}
        if prune is not None and "finetune" in prune:
            policy["prune_finetune"] = prune["finetune"]
            if "iterations" in prune:
                policy["iterations"] = prune["iterations"]
        if share is not None:
            if "finetune" in share:
                policy["finetune"] = share["finetune"]
            policy["include_bias"] = bool(share.get("include_bias", False))
        data["stages"] = [policy]
    data["name"] = f"{recipe.name}-auto"
    return parse_recipe(data, f"{recipe.name} (auto)")


def _amc_stage(stages: list[dict[str, Any]], given: dict[str, float]) -> dict[str, Any]:
    """One ``amc`` stage under ``given``: the recipe's own, or one built from its filter-pruning stage."""
    found = next((s for s in stages if s["technique"] == "amc"), None)
    if found is not None:
        return {**{k: v for k, v in found.items() if k not in AMC_BUDGETS}, **given}
    stage: dict[str, Any] = {"technique": "amc", "name": "auto", **given}
    source = next((s for s in stages if s["technique"] in ("filters", "ssl")), None)
    if source is not None:
        stage.update({k: source[k] for k in ("layers", "exclude", "finetune") if k in source})
        if source["technique"] == "filters":
            stage.update({k: source[k] for k in ("norm", "round_to") if k in source})
    return stage
