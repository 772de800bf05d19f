"""Reports: the evidence of a compression run as JSON, terminal tables and PNG plots.

A report is a plain JSON-able dict that the pipeline fills in. Keys (all optional here;
every function below tolerates the ones that are missing)::

    baseline.accuracy, baseline.params            accuracy in [0, 1], parameter count
    result.accuracy, result.nonzero_params
    size.dense_bytes, size.file_bytes             file_bytes may be null
    layers        [{name, shape, params, nonzeros, bits_per_weight, sparsity,
                    macs_dense, macs_effective}, ...]  (measure.LayerStats.to_dict())
    latency       {"baseline": {"batch_1": {"median_ms", ...}, "batch_64": ...}, "result": ...}
    recipe        dict
    history       [stage dict, ...]
    schedule      {"steps": [...], "sparsity": [...]}
    pruning_curve [{"kept": fraction, "accuracy": a}, ...]
    sensitivity   {layer: [[sparsity, accuracy], ...], ...}

Plots use matplotlib's object-oriented API on an Agg canvas, so they never touch
pyplot's global state or an interactive backend.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import TorchshrinkError

# --- JSON ----------------------------------------------------------------------------


def write_json(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``report`` as pretty JSON, atomically (temporary file + ``os.replace``).

    numpy / torch scalars and arrays become plain numbers and lists. A NaN or infinite
    value, or a value JSON cannot hold, raises :class:`TorchshrinkError` naming its key,
    before any file is touched.
    """
    text = json.dumps(_plain(report, "report"), indent=2, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a report written by :func:`write_json`."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _plain(obj: Any, where: str) -> Any:
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise TorchshrinkError(
                f"report value at {where!r} is {obj}; a report holds finite numbers only "
                "(did training diverge?)"
            )
        return float(obj)
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if callable(getattr(obj, "tolist", None)):  # numpy / torch scalars and arrays
        return _plain(obj.tolist(), where)
    raise TorchshrinkError(
        f"report value at {where!r} has type {type(obj).__name__}, which JSON cannot hold; "
        "store numbers, strings, lists or dicts"
    )


# --- terminal ------------------------------------------------------------------------


def print_report(report: Mapping[str, Any], console: Console | None = None) -> None:
    """Print the per-layer table, the storage table, the summary and (if any) the stage history."""
    console = console or Console()
    layers = report.get("layers") or []
    if layers:
        console.print(_layer_table(layers))
    storage = _storage_table(report.get("size") or {})
    if storage is not None:
        console.print(storage)
    console.print(_summary_table(report))
    runtime = _runtime_table(report)
    if runtime is not None:
        console.print(runtime)
    history = report.get("history") or []
    if history:
        console.print(_history_table(history))


def _layer_table(layers: Sequence[Mapping[str, Any]]) -> Table:
    t = Table(title="Layers")
    t.add_column("layer")
    t.add_column("shape")
    for col in ("params", "nonzeros", "kept", "MACs dense → effective", "bits/weight"):
        t.add_column(col, justify="right")
    for layer in layers:
        dense, eff = _layer_macs(layer)
        kept = _kept(layer)
        bits = layer.get("bits_per_weight")
        t.add_row(
            str(layer.get("name", "?")),
            "×".join(str(d) for d in layer.get("shape") or []) or "—",
            _int(layer.get("params")),
            _int(layer.get("nonzeros")),
            "—" if kept is None else f"{100 * kept:.1f}%",
            "—" if dense is None else f"{_si(dense)} → {_si(eff)}",
            "—" if bits is None else f"{bits:g}",
        )
    return t


def _summary_table(report: Mapping[str, Any]) -> Table:
    name = _get(report, "recipe.name")
    t = Table(title=f"Summary: {name}" if name else "Summary")
    t.add_column("")
    for col in ("baseline", "result", "change"):
        t.add_column(col, justify="right")

    a0, a1 = _get(report, "baseline.accuracy"), _get(report, "result.accuracy")
    delta = None if a0 is None or a1 is None else f"{100 * (a1 - a0):+.2f} pts"
    t.add_row("accuracy", _pct(a0), _pct(a1), delta or "—")

    p0, p1 = _get(report, "baseline.params"), _get(report, "result.nonzero_params")
    t.add_row("params → nonzeros", _int(p0), _int(p1), _ratio(p0, p1, "fewer"))

    b0, b1 = _get(report, "size.dense_bytes"), _get(report, "size.file_bytes")
    t.add_row("bytes dense → file", _bytes(b0), _bytes(b1), _ratio(b0, b1, "smaller"))

    lat0 = _get(report, "latency.baseline") or {}
    lat1 = _get(report, "latency.result") or {}
    for key in _batch_keys([*lat0, *lat1]):
        m0 = (lat0.get(key) or {}).get("median_ms")
        m1 = (lat1.get(key) or {}).get("median_ms")
        t.add_row(
            f"latency {key.replace('_', ' ')} (median)",
            _ms(m0),
            _ms(m1),
            _speed(m0, m1),
        )
    return t


def _storage_table(size: Mapping[str, Any]) -> Table | None:
    """Deep Compression Tables 2-3 style: per weight, index and value bits before/after Huffman."""
    rows = [r for r in size.get("tensors", []) if isinstance(r, Mapping)]
    if not rows:
        return None
    t = Table(title="Storage (model.tsk)")
    for col in ("tensor", "codec", "entries", "index bits", "weight bits", "bits/weight", "bytes"):
        t.add_column(col, justify="left" if col in ("tensor", "codec") else "right")

    def bits(entry: Any) -> str:
        if not isinstance(entry, Mapping):
            return "—"
        fixed, coded = entry.get("fixed_bits"), entry.get("bits_per_entry")
        if entry.get("huffman") and fixed is not None and coded is not None:
            return f"{fixed} → {coded:.2f}"
        return str(fixed) if fixed is not None else "—"

    for r in rows:
        value = r.get("codes") or r.get("values") or r.get("indices") or r.get("data")
        entries = next((e.get("entries") for e in (r.get("gaps"), value) if isinstance(e, Mapping)), None)
        t.add_row(str(r.get("name")), str(r.get("codec")), _int(entries), bits(r.get("gaps")), bits(value),
                  f"{r.get('bits_per_weight', float('nan')):.2f}", _int(r.get("bytes")))
    return t


def _runtime_table(report: Mapping[str, Any]) -> Table | None:
    """Energy per inference (estimate) and the runtime model's latency vs the dense one."""
    energy, runtime = report.get("energy"), report.get("runtime") or {}
    if not isinstance(energy, Mapping):
        return None
    t = Table(title="Inference: dense vs compressed runtime",
              caption=str(energy.get("assumptions", "")), caption_justify="left")
    for col in ("", "dense", "compressed", "change"):
        t.add_column(col, justify="left" if not col else "right")
    d, c = energy.get("dense") or {}, energy.get("compressed") or {}
    t.add_row("energy per inference (µJ, estimate)", f"{d.get('total_uj', float('nan')):.4f}",
              f"{c.get('total_uj', float('nan')):.4f}", _ratio(d.get("total_uj"), c.get("total_uj"), "less"))
    t.add_row("weight bytes read", _int(d.get("weight_bytes")), _int(c.get("weight_bytes")),
              f"from {d.get('weights_from', '?')} / {c.get('weights_from', '?')}")
    lat = runtime.get("latency") or {}
    for key in _batch_keys((lat.get("dense") or {}).keys()):
        a = (lat["dense"].get(key) or {}).get("median_ms")
        b = ((lat.get("compressed") or {}).get(key) or {}).get("median_ms")
        t.add_row(f"runtime latency {key.replace('_', ' ')} (median)", _ms(a), _ms(b), _speed(a, b))
    if "prediction_agreement" in runtime:
        t.add_row("predictions equal to the dense model", "", f"{runtime['prediction_agreement']:.2%}", "")
    return t


def _history_table(history: Sequence[Mapping[str, Any]]) -> Table:
    cols: list[str] = []
    for stage in history:
        cols += [k for k, v in stage.items() if k not in cols and _scalar(v)]
    t = Table(title="Stages")
    for c in cols:
        t.add_column(c, justify="left" if isinstance(history[0].get(c), str) else "right")
    for stage in history:
        t.add_row(*(_cell(stage.get(c)) for c in cols))
    return t


# --- plots ---------------------------------------------------------------------------


def plot_sparsity(layers: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Bar chart of the percentage of weights kept in each layer."""
    if not layers:
        raise TorchshrinkError("plot_sparsity needs at least one layer")
    names = [str(layer.get("name", "?")) or "(model)" for layer in layers]
    kept = [100 * (_kept(layer) or 0.0) for layer in layers]
    n = len(names)
    fig, ax = _figure(width=min(16.0, max(6.0, 0.6 * n + 2)))
    bars = ax.bar(range(n), kept, color="tab:blue")
    if n <= 30:
        ax.bar_label(bars, labels=[f"{k:.1f}%" for k in kept], fontsize=8)
    tilted = {"rotation": 45, "ha": "right", "fontsize": 8 if n > 30 else None} if n > 4 else {}
    ax.set_xticks(range(n), names, **tilted)
    ax.set_ylim(0, 110)
    ax.set(title="Weights kept per layer", xlabel="layer", ylabel="weights kept (%)")
    return _save(fig, path)


def plot_accuracy_vs_kept(
    points: Iterable[Mapping[str, float] | Sequence[float]],
    path: str | os.PathLike[str],
    baseline_accuracy: float | None = None,
) -> Path:
    """Accuracy against the fraction of weights kept (a pruning curve, Han 2015 Fig. 5)."""
    pts = _pairs(points, "kept", "accuracy", "plot_accuracy_vs_kept")
    fig, ax = _figure()
    ax.plot([100 * k for k, _ in pts], [100 * a for _, a in pts], "o-", label="pruned model")
    _baseline(ax, baseline_accuracy)
    if pts[0][0] > 0 and pts[-1][0] >= 10 * pts[0][0]:  # spans a decade: log axis
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set(title="Accuracy vs. weights kept", xlabel="weights kept (%)", ylabel="accuracy (%)")
    ax.legend()
    return _save(fig, path)


def plot_schedule(
    steps: Sequence[float], sparsity: Sequence[float], path: str | os.PathLike[str]
) -> Path:
    """Target sparsity over training steps (e.g. Zhu & Gupta 2017's cubic schedule)."""
    if len(steps) == 0 or len(steps) != len(sparsity):
        raise TorchshrinkError(
            f"plot_schedule needs equally long, non-empty steps and sparsity; got {len(steps)} "
            f"and {len(sparsity)}"
        )
    fig, ax = _figure()
    ax.plot(list(steps), [100 * s for s in sparsity], drawstyle="steps-post", label="target sparsity")
    ax.set_ylim(0, 105)
    ax.set(title="Sparsity schedule", xlabel="training step", ylabel="sparsity (%)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_sensitivity(
    curves: Mapping[str, Iterable[Sequence[float]]],
    path: str | os.PathLike[str],
    baseline_accuracy: float | None = None,
) -> Path:
    """Accuracy against sparsity, one line per layer pruned alone (Han 2015 Fig. 6)."""
    if not curves:
        raise TorchshrinkError("plot_sensitivity needs at least one layer's curve")
    fig, ax = _figure(width=7.5)
    for name, points in curves.items():
        pts = _pairs(points, "sparsity", "accuracy", f"plot_sensitivity (layer {name!r})")
        ax.plot([100 * s for s, _ in pts], [100 * a for _, a in pts], "o-", ms=3, label=name)
    _baseline(ax, baseline_accuracy)
    ax.set(title="Per-layer pruning sensitivity", xlabel="sparsity of the layer (%)", ylabel="accuracy (%)")
    ax.legend(fontsize=8, loc="lower left", ncol=2 if len(curves) > 8 else 1)
    return _save(fig, path)


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
    return paths


def _figure(width: float = 6.4, height: float = 4.2):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path: str | os.PathLike[str]) -> Path:
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


def _layer_macs(layer: Mapping[str, Any]) -> tuple[float | None, float | None]:
    macs = layer.get("macs")
    if isinstance(macs, Mapping):
        return macs.get("dense"), macs.get("effective", macs.get("dense"))
    dense = layer.get("macs_dense", macs)
    return dense, layer.get("macs_effective", dense)


def _batch_keys(keys: Iterable[str]) -> list[str]:
    def order(k: str) -> tuple[int, str]:
        tail = k.rsplit("_", 1)[-1]
        return (int(tail) if tail.isdigit() else 1 << 62, k)

    return sorted(dict.fromkeys(keys), key=order)


def _si(n: float | None) -> str:
    if n is None:
        return "—"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}"
    return f"{n:g}"


def _int(n: float | None) -> str:
    return "—" if n is None else f"{n:,}"


def _pct(a: float | None) -> str:
    return "—" if a is None else f"{100 * a:.2f}%"


def _ms(m: float | None) -> str:
    if m is None:
        return "—"
    return f"{m:.0f} ms" if m >= 100 else f"{m:.2f} ms" if m >= 1 else f"{m:.3f} ms"


def _bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for factor, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if n >= factor:
            return f"{n:,} B ({n / factor:.2f} {unit})"
    return f"{n:,} B"


def _ratio(before: float | None, after: float | None, word: str) -> str:
    if before is None or after is None or after <= 0:
        return "—"
    return f"{before / after:.1f}× {word}"


def _speed(before: float | None, after: float | None) -> str:
    if before is None or after is None or before <= 0 or after <= 0:
        return "—"
    r = before / after
    return f"{r:.2f}× faster" if r >= 1 else f"{1 / r:.2f}× slower"


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _cell(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
