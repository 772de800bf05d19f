"""Per-layer pruning sensitivity (Han et al. 2015, §4 and Fig. 6; Li et al. 2017, §4.1).

Each selected layer is pruned alone, over a grid of sparsities, with no retraining, and
the model is evaluated: the curves show which layers tolerate pruning (FC layers far more
than the first convolution) and guide the per-layer targets of a recipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.progress import Progress
from torch import nn
from torch.utils.data import Dataset

from .prune.magnitude import prune_layer
from .core.select import select_layers
from .core.transform import clone
from .train import evaluate

def sensitivity(
    model: nn.Module,
    test_data: Dataset,
    sparsities: Sequence[float],
    layers: Sequence[str] | str | None = None,
    *,
    progress: bool = True,
) -> dict[str, list[dict[str, float]]]:
    """``{layer: [{"sparsity": s, "accuracy": a}, ...]}`` pruning one layer at a time.

    The model itself is not modified: each point prunes a fresh copy.
    """
    names = [n for n, _ in select_layers(model, layers)]
    curves: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("sensitivity", total=len(names) * len(sparsities))
        for name in names:
            for s in sparsities:
                trial = clone(model)
                layer = dict(trial.named_modules())[name]
                if s > 0:
                    prune_layer(layer, sparsity=s, name=name)
                curves[name].append({"sparsity": float(s), "accuracy": evaluate(trial, test_data)["accuracy"]})
                bar.advance(task)
    return curves

def write_sensitivity(curves: dict[str, list[dict[str, float]]], out: Path,
                      baseline_accuracy: float | None = None) -> dict[str, Any]:
    """Write ``sensitivity.json`` and ``sensitivity.png``; return the JSON document."""
    from .report import plot_sensitivity, write_json

    doc = {"baseline_accuracy": baseline_accuracy, "curves": curves}
    write_json(doc, out / "sensitivity.json")
    plot_sensitivity({k: [(p["sparsity"], p["accuracy"]) for p in v] for k, v in curves.items()},
                     out / "sensitivity.png", baseline_accuracy=baseline_accuracy)
    return doc

def sensitivity_table(curves: dict[str, list[dict[str, float]]]):
    """A rich table: one row per layer, one column per sparsity."""
    from rich.table import Table

    sparsities = [p["sparsity"] for p in next(iter(curves.values()), [])]
    t = Table(title="accuracy with one layer pruned (no retraining)")
    t.add_column("layer")
    for s in sparsities:
        t.add_column(f"{s:.0%}", justify="right")
    for name, pts in curves.items():
        t.add_row(name, *(f"{p['accuracy']:.3f}" for p in pts))
    return t
