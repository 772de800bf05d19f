"""``torchshrink auto``: any pruning + weight-sharing recipe turned into a budgeted policy run.

The recipe's baseline and fine-tuning schedules are kept; its stages are replaced by one
``policy`` stage whose per-layer settings the search chooses. A recipe that already has a
``policy`` stage only gets the new budget.
"""

from __future__ import annotations

from typing import Any

from ..errors import RecipeError
from ..recipe import Recipe, parse_recipe
from .stage import METRICS


def auto_recipe(recipe: Recipe, budget: dict[str, float]) -> Recipe:
    """``recipe`` with its stages made one ``policy`` stage under ``budget`` (one of :data:`METRICS`' keys)."""
    given = {k: v for k, v in budget.items() if v is not None}
    if len(given) != 1 or next(iter(given)) not in METRICS:
        raise RecipeError(f"give exactly one budget: {', '.join('--' + k.replace('_', '-') for k in METRICS)}")
    data = recipe.model_dump(mode="json", exclude_none=True)
    stages: list[dict[str, Any]] = data.get("stages", [])
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
