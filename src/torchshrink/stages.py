"""The stages of a recipe: one generic runner, and the state every technique's ``apply`` sees.

:func:`run_stage` runs a validated stage of any technique in
:data:`~torchshrink.techniques.TECHNIQUES` on the :class:`RunState`; the tag names its
checkpoints. Comparison stages record results in ``state.extra`` and leave the model as
it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from .core.select import weight_layers
from .core.technique import StageSpec
from .data import DataBundle
from .errors import RecipeError
from .prune.masks import masks
from .recipe import Recipe
from .surgery.plan import apply_plan
from .techniques import TECHNIQUES
from .train import Callback, TrainConfig, TrainContext, fit


@dataclass
class RunState:
    """Everything a stage runner needs and may update."""

    recipe: Recipe
    data: DataBundle
    model: nn.Module
    out: Path
    seed: int
    resume: bool
    progress: bool
    console: Console
    baseline_config: TrainConfig
    history: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, float]] = field(default_factory=list)
    schedule: dict[str, list[float]] = field(default_factory=lambda: {"steps": [], "sparsity": []})
    extra: dict[str, Any] = field(default_factory=dict)
    steps_done: int = 0
    tag: str = "baseline"

    def fit(self, model: nn.Module, cfg: TrainConfig, callbacks: list[Callback], tag: str) -> list[dict[str, float]]:
        recorder = _Recorder(self)
        hist = fit(model, self.data.train, cfg, test_data=self.data.test, callbacks=[*callbacks, recorder],
                   checkpoint=self.out / "checkpoints" / f"{tag}.pt", resume=self.resume, seed=self.seed,
                   progress=self.progress, description=tag,
                   log=lambda s: self.console.print(f"[dim]{s}[/dim]", soft_wrap=True))
        self.steps_done += recorder.steps_per_epoch * cfg.epochs
        return hist


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero entries over the weights of every linear/conv layer."""
    total = zeros = 0
    with torch.no_grad():
        for _, layer in weight_layers(model):
            w = layer.weight
            total += w.numel()
            zeros += w.numel() - int(torch.count_nonzero(w))
    return zeros / max(total, 1)


class _Recorder(Callback):
    """Records the sparsity schedule (per step) and accuracy vs kept weights (per epoch)."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    def on_train_begin(self, ctx: TrainContext) -> None:
        self.steps_per_epoch = ctx.steps_per_epoch
        self.every = max(1, ctx.total_steps // 100)

    def on_step_begin(self, ctx: TrainContext) -> None:
        if ctx.step % self.every == 0 and masks(ctx.model):
            self.state.schedule["steps"].append(self.state.steps_done + ctx.step)
            self.state.schedule["sparsity"].append(weight_sparsity(ctx.model))

    def on_epoch_end(self, ctx: TrainContext) -> None:
        if masks(ctx.model) and "test_accuracy" in ctx.logs:
            self.state.curve.append({"kept": 1.0 - weight_sparsity(ctx.model),
                                     "accuracy": ctx.logs["test_accuracy"]})


# ---------------------------------------------------------------- the stage runner
def finetune_config(stage_cfg: TrainConfig | None, base: TrainConfig) -> TrainConfig:
    """A stage's retraining config: given, or the baseline's at 1/10 of its learning rate."""
    return stage_cfg if stage_cfg is not None else base.model_copy(update={"lr": base.lr / 10})


def run_stage(st: RunState, spec: StageSpec, tag: str) -> None:
    """Run one stage of any registered technique on ``st.model``.

    The technique's ``apply`` attaches transforms and/or returns a :class:`Step`; its
    surgery plan gives ``st.model`` a new model, then the stage fine-tunes with the
    step's callbacks when its config has epochs. A stage's transforms are a
    deterministic function of the weights, so on ``--resume`` applying them again to the
    reloaded previous stage rebuilds the structure the checkpoint needs.
    """
    technique = TECHNIQUES[spec.technique]
    cfg = finetune_config(getattr(spec, "finetune", None), st.baseline_config)
    st.tag = tag
    try:
        step = technique.apply(st, spec, cfg)
    except RecipeError as e:
        raise RecipeError(f"{tag}: {e}") from None
    if step.plan:
        st.model = apply_plan(st.model, step.plan)
    if step.finetune and cfg.epochs > 0:
        st.fit(st.model, cfg, step.callbacks, tag)
