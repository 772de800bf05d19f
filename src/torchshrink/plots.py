"""PNG plots of a report: sparsity per layer, accuracy vs kept weights, the pruning
schedule, and per-layer sensitivity curves (Han et al. 2015, Fig. 6).

Plots use matplotlib's object-oriented API on an Agg canvas, so they never touch
pyplot's global state or an interactive backend.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import TorchshrinkError


def plot_sparsity(layers: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Bar chart of the percentage of weights kept in each layer."""
    if not layers:
        raise TorchshrinkError("plot_sparsity needs at least one layer")
    names = [str(layer.get("name", "?")) or "(model)" for layer in layers]
    kept = [100 * (_kept(layer) or 0.0) for layer in layers]
    n = len(names)
    fig, ax = figure(width=min(16.0, max(6.0, 0.6 * n + 2)))
    bars = ax.bar(range(n), kept, color="tab:blue")
    if n <= 30:
        ax.bar_label(bars, labels=[f"{k:.1f}%" for k in kept], fontsize=8)
    tilted = {"rotation": 45, "ha": "right", "fontsize": 8 if n > 30 else None} if n > 4 else {}
    ax.set_xticks(range(n), names, **tilted)
    ax.set_ylim(0, 110)
    ax.set(title="Weights kept per layer", xlabel="layer", ylabel="weights kept (%)")
    return save_figure(fig, path)


def plot_accuracy_vs_kept(
    points: Iterable[Mapping[str, float] | Sequence[float]],
    path: str | os.PathLike[str],
    baseline_accuracy: float | None = None,
) -> Path:
    """Accuracy against the fraction of weights kept (a pruning curve, Han 2015 Fig. 5)."""
    pts = _pairs(points, "kept", "accuracy", "plot_accuracy_vs_kept")
    fig, ax = figure()
    ax.plot([100 * k for k, _ in pts], [100 * a for _, a in pts], "o-", label="pruned model")
    _baseline(ax, baseline_accuracy)
    if pts[0][0] > 0 and pts[-1][0] >= 10 * pts[0][0]:  # spans a decade: log axis
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set(title="Accuracy vs. weights kept", xlabel="weights kept (%)", ylabel="accuracy (%)")
    ax.legend()
    return save_figure(fig, path)


def plot_schedule(
    steps: Sequence[float], sparsity: Sequence[float], path: str | os.PathLike[str]
) -> Path:
    """Target sparsity over training steps (e.g. Zhu & Gupta 2017's cubic schedule)."""
    if len(steps) == 0 or len(steps) != len(sparsity):
        raise TorchshrinkError(
            f"plot_schedule needs equally long, non-empty steps and sparsity; got {len(steps)} "
            f"and {len(sparsity)}"
        )
    fig, ax = figure()
    ax.plot(list(steps), [100 * s for s in sparsity], drawstyle="steps-post", label="target sparsity")
    ax.set_ylim(0, 105)
    ax.set(title="Sparsity schedule", xlabel="training step", ylabel="sparsity (%)")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def plot_sensitivity(
    curves: Mapping[str, Iterable[Sequence[float]]],
    path: str | os.PathLike[str],
    baseline_accuracy: float | None = None,
) -> Path:
    """Accuracy against sparsity, one line per layer pruned alone (Han 2015 Fig. 6)."""
    if not curves:
        raise TorchshrinkError("plot_sensitivity needs at least one layer's curve")
    fig, ax = figure(width=7.5)
    for name, points in curves.items():
        pts = _pairs(points, "sparsity", "accuracy", f"plot_sensitivity (layer {name!r})")
        ax.plot([100 * s for s, _ in pts], [100 * a for _, a in pts], "o-", ms=3, label=name)
    _baseline(ax, baseline_accuracy)
    ax.set(title="Per-layer pruning sensitivity", xlabel="sparsity of the layer (%)", ylabel="accuracy (%)")
    ax.legend(fontsize=8, loc="lower left", ncol=2 if len(curves) > 8 else 1)
    return save_figure(fig, path)


def write_plots(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write every plot the report has data for into ``out_dir``; return their paths."""
    out = Path(out_dir)
    base = _get(report, "baseline.accuracy")
    paths: list[Path] = []
    if report.get("layers"):
        paths.append(plot_sparsity(report["layers"], out / "sparsity.png"))
    if report.get("pruning_curve"):
        paths.append(plot_accuracy_vs_kept(report["pruning_curve"], out / "accuracy_vs_kept.png", base))
    sched = report.get("schedule") or {}
    if sched.get("steps"):
        paths.append(plot_schedule(sched["steps"], sched.get("sparsity") or [], out / "schedule.png"))
    if report.get("sensitivity"):
        paths.append(plot_sensitivity(report["sensitivity"], out / "sensitivity.png", base))
    if report.get("tt_ranks"):
        paths.append(plot_tt_ranks(report["tt_ranks"], out / "tt_ranks.png", base))
    return paths


def plot_tt_ranks(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], baseline: float | None) -> Path:
    """Accuracy and TT parameters vs TT rank (Novikov et al. 2015, Fig. 1 / Table 1)."""
    fig, ax = figure()
    ranks = [r["rank"] for r in rows]
    ax.plot(ranks, [100 * r["accuracy"] for r in rows], "o-", label="accuracy")
    _baseline(ax, baseline)
    ax.set_xlabel("max TT rank")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xscale("log", base=2)
    right = ax.twinx()
    right.plot(ranks, [r.get("tt_params_with_bias", r["tt_params"]) for r in rows], "s--", color="tab:orange",
               label="parameters")
    right.set_ylabel("parameters of the TT layers (bias included)")
    right.set_yscale("log")
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def figure(width: float = 6.4, height: float = 4.2):
    """A matplotlib figure and its axes, drawn off screen (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders made), with a light grid."""
    fig.axes[0].grid(True, alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path


def _baseline(ax, accuracy: float | None) -> None:
    if accuracy is not None:
        ax.axhline(100 * accuracy, color="gray", ls="--", lw=1, label=f"baseline {100 * accuracy:.2f}%")


def _pairs(points: Iterable[Any], xkey: str, ykey: str, who: str) -> list[tuple[float, float]]:
    """(x, y) pairs from dicts or 2-sequences, sorted by x."""
    pts = []
    for p in points:
        x, y = (p[xkey], p[ykey]) if isinstance(p, Mapping) else p
        pts.append((float(x), float(y)))
    if not pts:
        raise TorchshrinkError(f"{who} needs at least one ({xkey}, {ykey}) point")
    return sorted(pts)


# --- formatting ----------------------------------------------------------------------


def _get(report: Mapping[str, Any], dotted: str) -> Any:
    node: Any = report
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _kept(layer: Mapping[str, Any]) -> float | None:
    if layer.get("sparsity") is not None:
        return 1.0 - layer["sparsity"]
    if layer.get("params"):
        return (layer.get("nonzeros") or 0) / layer["params"]
    return None
