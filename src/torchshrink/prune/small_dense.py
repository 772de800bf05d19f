"""Large-sparse vs small-dense at equal nonzeros (Zhu & Gupta 2017, §5).

The stage trains a small dense LeNet-300-100 whose hidden sizes are scaled so that its
weight count is closest to the current (pruned) model's nonzero weights, and reports
both accuracies side by side. The main model is left as it was.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..core.technique import StageSpec, Step, Technique
from ..errors import RecipeError
from ..measure import model_summary
from ..models import build_model
from ..train import TrainConfig, evaluate, model_device


class SmallDenseSpec(StageSpec):
    """Zhu & Gupta 2017 §5: train a small dense model with the nonzeros of the current one."""

    technique: Literal["small_dense"]
    train: TrainConfig | None = Field(None, description="default: the baseline's training config")


def scaled_hidden(spec: dict[str, Any], target: int) -> tuple[int, ...]:
    """Hidden sizes ``round(f·h)`` whose weight count is closest to ``target``."""
    c, h, w = spec["input_shape"]
    sizes = [c * h * w, *spec["kwargs"].get("hidden", (300, 100)), spec["num_classes"]]

    def count(f: float) -> int:
        s = [sizes[0], *(max(1, round(f * x)) for x in sizes[1:-1]), sizes[-1]]
        return sum(a * b for a, b in zip(s, s[1:]))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    f = min((lo, hi), key=lambda f: abs(count(f) - target))
    return tuple(max(1, round(f * x)) for x in sizes[1:-1])


def _apply(ctx: Any, spec: SmallDenseSpec, finetune: TrainConfig) -> Step:
    zoo = getattr(ctx.model, "zoo_spec", None) or {"name": type(ctx.model).__name__}
    if zoo["name"] != "lenet300":
        raise RecipeError(f"small_dense supports the lenet300 model (scaled hidden sizes), not {zoo['name']!r}")
    shape = ctx.data.input_shape
    large = model_summary(ctx.model, shape)
    target = large["weight_nonzeros"]
    hidden = scaled_hidden(zoo, target)
    torch.manual_seed(ctx.seed)
    small = build_model("lenet300", shape, ctx.data.num_classes,
                        **{**zoo["kwargs"], "hidden": hidden}).to(model_device(ctx.model))
    ctx.fit(small, spec.train if spec.train is not None else ctx.baseline_config, [], ctx.tag)
    small_weights = model_summary(small, shape)["weight_params"]
    c = {"large_sparse": {"accuracy": evaluate(ctx.model, ctx.data.test)["accuracy"], "nonzero_weights": target,
                          "weights": large["weight_params"]},
         "small_dense": {"accuracy": evaluate(small, ctx.data.test)["accuracy"], "hidden": list(hidden),
                         "weights": small_weights}}
    ctx.extra["comparison"] = c
    ctx.console.print(f"{ctx.tag}: large-sparse {c['large_sparse']['accuracy']:.4f} with {target:,} nonzero "
                      f"weights; small-dense (hidden {hidden}) {c['small_dense']['accuracy']:.4f} with "
                      f"{small_weights:,} weights")
    return Step(finetune=False)


TECHNIQUE = Technique("small_dense", SmallDenseSpec, _apply, changes_model=False)
