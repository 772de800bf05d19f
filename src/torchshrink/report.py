"""Reports: the evidence of a compression run as JSON, terminal tables and PNG plots.

A report is a plain JSON-able dict that the pipeline fills in. Keys (all optional here;
every function below tolerates the ones that are missing)::

    baseline.accuracy, baseline.params            accuracy in [0, 1], parameter count
    result.accuracy, result.nonzero_params
    size.dense_bytes, size.file_bytes             file_bytes may be null
    layers        [{name, shape, params, nonzeros, bits_per_weight, sparsity,
                    macs_dense, macs_effective}, ...]  (measure.LayerStats.to_dict())
    latency       {"baseline": {"batch_1": {"median_ms", "min_ms", "spread", ...}, "batch_64": ...},
                   "result": ... (decoded dense), "runtime": ..., "noisy": {"batch_1": bool, ...}}
    recipe        dict
    history       [stage dict, ...]
    schedule      {"steps": [...], "sparsity": [...]}
    pruning_curve [{"kept": fraction, "accuracy": a}, ...]
    sensitivity   {layer: [[sparsity, accuracy], ...], ...}

The PNG plots are in :mod:`torchshrink.plots` (re-exported here).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .errors import TorchshrinkError
from .files import atomic_write
from .plots import (
    _get,
    _kept,
    plot_accuracy_vs_kept,
    plot_schedule,
    plot_sensitivity,
    plot_sparsity,
    write_plots,
)

__all__ = ["plot_accuracy_vs_kept", "plot_schedule", "plot_sensitivity", "plot_sparsity", "print_report",
           "read_json", "write_json", "write_plots"]

# --- JSON ----------------------------------------------------------------------------


def write_json(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``report`` as pretty JSON, atomically (temporary file + ``os.replace``).

    numpy / torch scalars and arrays become plain numbers and lists. A NaN or infinite
    value, or a value JSON cannot hold, raises :class:`TorchshrinkError` naming its key,
    before any file is touched.
    """
    text = json.dumps(_plain(report, "report"), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, text.encode("utf-8"))


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
    latency = _latency_table(report)
    if latency is not None:
        console.print(latency)
    runtime = _runtime_table(report)
    if runtime is not None:
        console.print(runtime)
    history = report.get("history") or []
    if history:
        console.print(_history_table(history))
    comparison = report.get("comparison")
    if isinstance(comparison, list) and comparison:  # compare rows (small_dense writes a dict here)
        console.print(_comparison_table(comparison))
    from .techniques import TECHNIQUES

    for technique in TECHNIQUES.values():
        own = None if technique.summary is None else technique.summary(report)
        if own is not None:
            console.print(own)


def _comparison_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """A compare stage's rows (``report_key: comparison``): [model,] method, accuracy, file bytes, ratio."""
    t = Table(title="Comparison (each method on a copy of the baseline)")
    by_model = any("model" in r for r in rows)
    if by_model:
        t.add_column("model")
    t.add_column("method")
    for col in ("accuracy", "file bytes", "vs fp32 state dict"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(*([str(r.get("model"))] if by_model else []), str(r.get("method")), _pct(r.get("accuracy")),
                  _int(r.get("file_bytes")), "—" if r.get("ratio") is None else f"{r['ratio']:.1f}x")
    return t


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

    return t


def _latency_table(report: Mapping[str, Any]) -> Table | None:
    """The one latency table: dense baseline, decoded dense (model.tsk, dense=True), runtime (model.tsk)."""
    lat = report.get("latency")
    if not isinstance(lat, Mapping):
        return None
    cols = [(k, label) for k, label in (("baseline", "dense baseline"), ("result", "decoded dense"),
                                        ("runtime", "runtime")) if isinstance(lat.get(k), Mapping)]
    keys = _batch_keys([key for k, _ in cols for key in lat[k]])
    if not keys:
        return None
    t = Table(title="Latency (median ms; min and spread in brackets; measured together, interleaved)")
    t.add_column("")
    for _, label in cols:
        t.add_column(label, justify="right")
    t.add_column("decoded vs baseline", justify="right")
    t.add_column("runtime vs decoded", justify="right")

    def med(k: str, key: str) -> float | None:
        return ((lat.get(k) or {}).get(key) or {}).get("median_ms")

    def cell(k: str, key: str) -> str:
        s = (lat.get(k) or {}).get(key) or {}
        extra = f" ({_ms(s['min_ms'])}, {s['spread']:.0%})" if "min_ms" in s and "spread" in s else ""
        return _ms(s.get("median_ms")) + extra

    for key in keys:
        noisy = (lat.get("noisy") or {}).get(key)
        t.add_row(f"latency {key.replace('_', ' ')}" + (" (noisy)" if noisy else ""), *(cell(k, key) for k, _ in cols),
                  _speed(med("baseline", key), med("result", key)), _speed(med("result", key), med("runtime", key)))
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
        index, value = r.get(r.get("index_role") or ""), r.get(r.get("weight_role") or "")
        entries = next((e.get("entries") for e in (index, value) if isinstance(e, Mapping)), None)
        t.add_row(str(r.get("name")), str(r.get("codec")), _int(entries), bits(index), bits(value),
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
    paths = runtime.get("paths") or []
    for batch in sorted({r.get("batch") for r in paths if isinstance(r, Mapping) and r.get("batch")}):
        rows = [r for r in paths if r.get("batch") == batch and not str(r.get("layer", "")).startswith("(")]
        whole = next((r.get("path") for r in paths if r.get("batch") == batch and r.get("layer") == "(whole model)"),
                     None)
        label = ", ".join(f"{r.get('layer')}: {r.get('path')}" for r in rows) or "—"
        t.add_row(f"paths at batch {batch}", "", f"whole model: {whole or '?'}", label)
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
