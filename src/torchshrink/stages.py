"""The stages of a recipe: one runner per technique, and the state they share.

Each runner takes the :class:`RunState`, its validated stage and a tag (used for
checkpoint names), and changes ``state.model`` in place -- or, for comparison stages,
records results in ``state.extra`` and leaves the model as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn

from .data import DataBundle
from .errors import RecipeError
from .measure import model_summary, state_dict_bytes
from .models import build_model
from .prune.magnitude import IterativePruning, magnitude
from .prune.masks import masks
from .prune.schedule import AGP
from .recipe import AGPStage, MagnitudeStage, Recipe, SmallDenseStage
from .selection import weight_layers
from .train import Callback, TrainConfig, TrainContext, evaluate, fit


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


# ---------------------------------------------------------------- stage runners
def _finetune_config(stage_cfg: TrainConfig | None, base: TrainConfig) -> TrainConfig:
    """A stage's retraining config: given, or the baseline's at 1/10 of its learning rate."""
    return stage_cfg if stage_cfg is not None else base.model_copy(update={"lr": base.lr / 10})


def run_magnitude(st: RunState, stage: MagnitudeStage, tag: str) -> None:
    cfg = _finetune_config(stage.finetune, st.baseline_config)
    if cfg.epochs == 0:
        magnitude(st.model, stage.sparsity, quality=stage.quality, layers=stage.layers,
                  exclude=stage.exclude, scope=stage.scope)
        return
    if cfg.epochs < stage.iterations:
        raise RecipeError(f"{tag}: finetune.epochs ({cfg.epochs}) must be >= iterations ({stage.iterations})")
    cb = IterativePruning(stage.sparsity, quality=stage.quality, iterations=stage.iterations,
                          epochs_per_iteration=cfg.epochs // stage.iterations, layers=stage.layers,
                          exclude=stage.exclude, scope=stage.scope, scale_dropout=stage.scale_dropout)
    st.fit(st.model, cfg, [cb], tag)


def run_agp(st: RunState, stage: AGPStage, tag: str) -> None:
    cfg = _finetune_config(stage.finetune, st.baseline_config)
    if stage.end_epoch > cfg.epochs:
        raise RecipeError(f"{tag}: end_epoch ({stage.end_epoch}) is after the last finetune epoch ({cfg.epochs})")
    cb = AGP(stage.sparsity, initial_sparsity=stage.initial_sparsity, start_epoch=stage.start_epoch,
             end_epoch=stage.end_epoch, frequency=stage.frequency, layers=stage.layers, exclude=stage.exclude)
    st.fit(st.model, cfg, [cb], tag)


def run_small_dense(st: RunState, stage: SmallDenseStage, tag: str) -> None:
    """Zhu & Gupta §5: a small dense model with as many weights as the large sparse one."""
    spec = st.model.zoo_spec
    if spec["name"] != "lenet300":
        raise RecipeError(f"{tag}: small_dense supports the lenet300 model (scaled hidden sizes), not {spec['name']!r}")
    target = model_summary(st.model, st.data.input_shape)["weight_nonzeros"]
    hidden = _scaled_hidden(spec, target)
    torch.manual_seed(st.seed)
    small = build_model("lenet300", st.data.input_shape, st.data.num_classes,
                        **{**spec["kwargs"], "hidden": hidden}).to(next(st.model.parameters()).device)
    cfg = stage.train if stage.train is not None else st.baseline_config
    st.fit(small, cfg, [], tag)
    small_summary = model_summary(small, st.data.input_shape)
    st.extra["comparison"] = {
        "large_sparse": {"accuracy": evaluate(st.model, st.data.test)["accuracy"], "nonzero_weights": target,
                         "weights": model_summary(st.model, st.data.input_shape)["weight_params"]},
        "small_dense": {"accuracy": evaluate(small, st.data.test)["accuracy"], "hidden": list(hidden),
                        "weights": small_summary["weight_params"]},
    }
    c = st.extra["comparison"]
    st.console.print(f"{tag}: large-sparse {c['large_sparse']['accuracy']:.4f} with {target:,} nonzero weights; "
                     f"small-dense (hidden {hidden}) {c['small_dense']['accuracy']:.4f} with "
                     f"{small_summary['weight_params']:,} weights")


def _scaled_hidden(spec: dict[str, Any], target: int) -> tuple[int, ...]:
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


def _quantize_then_finetune(st: RunState, stage: Any, tag: str, apply: Callable[[nn.Module], Any]) -> None:
    """Apply a storage transform, then fine-tune what it left trainable (codebooks, factors).

    The transform is a deterministic function of the weights, so on ``--resume`` applying
    it again to the reloaded previous stage rebuilds the structure the checkpoint needs.
    """
    apply(st.model)
    cfg = _finetune_config(stage.finetune, st.baseline_config)
    if cfg.epochs > 0:
        st.fit(st.model, cfg, [], tag)


def run_kmeans(st: RunState, stage: Any, tag: str) -> None:
    from .quantize.kmeans import share_weights

    _quantize_then_finetune(st, stage, tag, lambda m: share_weights(
        m, stage.bits, layers=stage.layers, exclude=stage.exclude, init=stage.init,
        fc_bits=stage.fc_bits, conv_bits=stage.conv_bits, include_bias=stage.include_bias))


def run_pq(st: RunState, stage: Any, tag: str) -> None:
    from .quantize.product import product_quantize

    _quantize_then_finetune(st, stage, tag, lambda m: product_quantize(
        m, subvector=stage.subvector, codewords=stage.codewords, layers=stage.layers, exclude=stage.exclude))


def run_rq(st: RunState, stage: Any, tag: str) -> None:
    from .quantize.product import residual_quantize

    _quantize_then_finetune(st, stage, tag, lambda m: residual_quantize(
        m, stages=stage.stages, subvector=stage.subvector, codewords=stage.codewords, layers=stage.layers,
        exclude=stage.exclude))


def run_svd(st: RunState, stage: Any, tag: str) -> None:
    from .factorize.svd import low_rank

    _quantize_then_finetune(st, stage, tag, lambda m: low_rank(
        m, stage.rank, layers=stage.layers, exclude=stage.exclude))


def run_compare(st: RunState, stage: Any, tag: str) -> None:
    """Each method on its own copy of the model: file bytes, ratio and accuracy side by side."""
    from dataclasses import replace

    from .format import save as save_tsk

    dense_bytes = state_dict_bytes(st.model)
    rows = []
    for j, method in enumerate(stage.methods):
        label = method.name or f"{method.technique}{j + 1}"
        branch = replace(st, model=copy.deepcopy(st.model), history=[], curve=[], extra={},
                         schedule={"steps": [], "sparsity": []})
        RUNNERS[method.technique](branch, method, f"{tag}-{label}")
        info = save_tsk(branch.model, st.out / "compare" / f"{label}.tsk")
        acc = evaluate(branch.model, st.data.test)["accuracy"]
        rows.append({"method": label, "technique": method.technique, "accuracy": acc,
                     "file_bytes": info.file_bytes, "ratio": dense_bytes / info.file_bytes,
                     "params": model_summary(branch.model, st.data.input_shape)["params"]})
        st.console.print(f"{tag}: {label}: accuracy {acc:.4f}, {info.file_bytes:,} bytes "
                         f"({dense_bytes / info.file_bytes:.1f}x smaller)")
    st.extra.setdefault("methods", []).extend(rows)


RUNNERS: dict[str, Callable[[RunState, Any, str], None]] = {
    "magnitude": run_magnitude, "agp": run_agp, "small_dense": run_small_dense,
    "kmeans": run_kmeans, "pq": run_pq, "rq": run_rq, "svd": run_svd, "compare": run_compare,
}


# ---------------------------------------------------------------- the run
