"""Running a recipe: baseline, stages, measurement, report.

``run_recipe`` is what ``torchshrink run`` calls. Every training run writes an atomic
checkpoint per epoch under ``OUT/checkpoints``; with ``resume=True`` each finished run
reloads its final checkpoint at once and the interrupted one continues where it stopped,
so a killed run resumed ends exactly where an uninterrupted one would. The stage runners
live in :mod:`torchshrink.stages`.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from . import __version__
from .data import DataBundle, load_data
from .forms import FORMS
from .errors import RecipeError, TorchshrinkError, TrainingError
from .files import OutputFolder
from .core.transform import bake
from .measure import compare_latency, layer_stats, model_summary, state_dict_bytes, weight_bytes_touched
from .models import build_model
from .recipe import Recipe
from .runtime.modules import runtime_layers
from .stages import RunState, run_stage, weight_sparsity
from .techniques import TECHNIQUES
from .train import TrainConfig, evaluate, model_device
from .weights import load_into


@dataclass
class RunResult:
    report: dict[str, Any]
    model: nn.Module
    baseline: nn.Module
    out: Path


def prepare(recipe: Recipe, seed: int) -> tuple[DataBundle, nn.Module]:
    """Load the data and build the (untrained) model of a recipe."""
    d = recipe.data
    data = load_data(d.name, d.root, download=d.download, limit=d.limit)
    torch.manual_seed(seed)
    model = build_model(recipe.model.name, data.input_shape, data.num_classes, **recipe.model.args)
    return data, model.to(resolve_device(recipe.device))


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (an error naming the problem when CUDA is missing) or ``auto``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("device: cuda was asked for, but torch sees no CUDA device; use cpu or auto")
    return torch.device(name)


def train_baseline(st: RunState) -> None:
    b = st.recipe.baseline
    if b.load is not None:
        load_into(st.model, b.load)
    else:
        st.history.append({"stage": "baseline", "technique": "train",
                           "epochs": st.fit(st.model, b.train, [], "baseline")})


def run_recipe(recipe: Recipe, out: str | Path, *, resume: bool = False, seed: int | None = None,
               progress: bool = True, console: Console | None = None) -> RunResult:
    """Run ``recipe``, writing checkpoints, ``report.json``, plots and ``model.tsk`` to ``out``.

    The run holds ``out`` exclusively (a second run into it is refused); a run that fails
    leaves no ``model.tsk`` or ``report.json`` behind (see :class:`~torchshrink.files.OutputFolder`).
    """
    with OutputFolder(out):
        return _run(recipe, Path(out), resume, recipe.seed if seed is None else seed, progress, console or Console())


def _run(recipe: Recipe, out: Path, resume: bool, seed: int, progress: bool, console: Console) -> RunResult:
    from .format import load, read_tsk, runtime_model, save
    from .report import print_report, write_json, write_plots

    t0 = time.perf_counter()
    data, model = prepare(recipe, seed)
    base_cfg = recipe.baseline.train or TrainConfig()
    st = RunState(recipe, data, model, out, seed, resume, progress, console, base_cfg)
    console.print(f"[bold]{recipe.name}[/bold]: {recipe.model.name} on {data.name} "
                  f"({len(data.train)} train / {len(data.test)} test), seed {seed}")
    train_baseline(st)
    check_finite_outputs(st.model, data, "the baseline")
    baseline = copy.deepcopy(st.model)
    base_acc = evaluate(baseline, data.test)["accuracy"]
    console.print(f"baseline accuracy {base_acc:.4f}")
    for i, stage in enumerate(recipe.stages):
        tag = f"stage{i + 1}-{stage.name or stage.technique}"
        run_stage(st, stage, tag)
        if not TECHNIQUES[stage.technique].changes_model:  # comparisons leave the model as it was
            continue
        acc, sparsity = evaluate(st.model, data.test)["accuracy"], weight_sparsity(st.model)
        st.history.append({"stage": tag, "technique": stage.technique, "accuracy": acc, "weight_sparsity": sparsity})
        console.print(f"{tag}: accuracy {acc:.4f}, weight sparsity {sparsity:.4f}")

    check_finite_outputs(st.model, data, "the compressed model")
    info = save(st.model, out / "model.tsk", codecs=recipe.save.codecs or None, huffman=recipe.save.huffman)
    result = bake(st.model)
    stored = read_tsk(out / "model.tsk")  # opened once: the decoded and the runtime model come from it
    loaded = load(stored, dense=True)
    if not outputs_equal(result, loaded, data.test):
        raise TorchshrinkError(f"{out / 'model.tsk'} does not reproduce the model's outputs; please report this bug")
    fast = runtime_model(stored, loaded, batches=tuple(recipe.measure.batches))
    report = build_report(st, baseline, result, base_acc, storage_report(info, stored.file_bytes),
                          touched=weight_bytes_touched(fast, 1))
    report["runtime"] = runtime_report(fast, loaded, data, recipe)
    if recipe.measure.latency:
        report["latency"] = latency_report(baseline, loaded, fast, data.input_shape, recipe)
    report["timing"] = {"seconds": time.perf_counter() - t0}
    report["plots"] = [str(p) for p in write_plots(report, out)]
    write_json(report, out / "report.json")
    print_report(report, console)
    return RunResult(report, result, baseline, out)


@torch.no_grad()
def check_finite_outputs(model: nn.Module, data: DataBundle, what: str, batch: int = 512) -> None:
    """Raise a :class:`TrainingError` naming ``what`` unless its test-set outputs are all finite."""
    was = model.training
    model.eval()
    try:
        device = model_device(model)
        x = data.test.tensors[0]
        for i in range(0, len(x), batch):
            if not bool(torch.isfinite(model(x[i : i + batch].to(device))).all()):
                raise TrainingError(f"{what} gives NaN or infinite outputs on the test set (weights or activations "
                                    "overflow float32); nothing was saved")
    finally:
        model.train(was)


@torch.no_grad()
def outputs_equal(a: nn.Module, b: nn.Module, dataset: Any, batch: int = 512) -> bool:
    """True when both models give bit-identical outputs on every sample of ``dataset``.

    ``b`` runs on ``a``'s device (the same kernels), so equal weights give equal outputs.
    """
    a.eval(), b.eval()
    device = model_device(a)
    b = b.to(device)
    x = dataset.tensors[0]
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].to(device)
        if not torch.equal(a(xb), b(xb)):
            return False
    return True


def energy_report(baseline: dict[str, Any], result: dict[str, Any], weight_bytes: int) -> dict[str, Any]:
    """Dense baseline vs compressed model: energy per inference (see measure.energy_estimate).

    ``baseline`` / ``result`` are model summaries (MACs, parameters). ``weight_bytes`` is
    what the runtime model reads per inference at batch 1
    (:func:`~torchshrink.measure.weight_bytes_touched`, the figure ``torchshrink bench``
    prints); the dense model reads its fp32 parameters; operations are counted at the
    nonzero weights.
    """
    from .measure import energy_assumptions, energy_estimate

    dense = energy_estimate(baseline["macs_dense"], 4 * baseline["params"])
    comp = energy_estimate(result["macs_effective"], weight_bytes)
    return {"dense": dense, "compressed": comp, "ratio": dense["total_uj"] / max(comp["total_uj"], 1e-12),
            "assumptions": energy_assumptions() + "; compressed weights counted as the bytes the runtime model "
                           "reads at batch 1 (kernel layouts, or fp32 where a layer runs dense), "
                           "operations at the nonzero weights"}


def runtime_report(fast: nn.Module, plain: nn.Module, data: DataBundle, recipe: Recipe) -> dict[str, Any]:
    """The runtime model (``fast``) vs ``plain``, the decoded dense one: agreement and the measured paths."""
    from .runtime.dispatch import paths

    plain = plain.cpu().eval()
    n_fast = runtime_layers(fast)
    with torch.no_grad():
        x = data.test.tensors[0]
        agree = float((fast(x).argmax(1) == plain(x).argmax(1)).float().mean())
    return {"compressed_layers": n_fast, "prediction_agreement": agree, "paths": paths(fast),
            "weight_bytes_touched": {f"batch_{b}": weight_bytes_touched(fast, b) for b in recipe.measure.batches}}


def latency_report(baseline: nn.Module, decoded: nn.Module, fast: nn.Module, input_shape: Any,
                   recipe: Recipe) -> dict[str, Any]:
    """The one latency table: dense baseline, decoded dense (``dense=True``) and runtime, timed together.

    Per batch size the three run interleaved until their medians are stable
    (:func:`~torchshrink.measure.compare_latency`), so their ratios hold under load.
    Keys: ``baseline``, ``result`` (the decoded dense model), ``runtime`` -> ``batch_<b>``
    -> stats; ``noisy`` -> ``batch_<b>`` -> bool.
    """
    m = recipe.measure
    models = {"baseline": baseline.cpu().eval(), "result": decoded.cpu().eval(), "runtime": fast}
    out: dict[str, Any] = {name: {} for name in models}
    out["noisy"] = {}
    for b in m.batches:
        res = compare_latency(models, input_shape, b, min_runs=m.repeats, max_seconds=3.0)
        for name, stats in res["models"].items():
            out[name][f"batch_{b}"] = stats
        out["noisy"][f"batch_{b}"] = res["noisy"]
    return out


def storage_report(info: Any, file_bytes: int) -> dict[str, Any]:
    """File size and, per tensor, form, codec and bits (Deep Compression Tables 2-3 style).

    Per stream (keyed by its role): bytes, entries, whether Huffman coded, the bits per
    entry as stored and ``fixed_bits``, the entry width before Huffman coding;
    ``index_role`` / ``weight_role`` name the position and value streams (from the form).
    ``file_bytes`` is measured.
    """
    rows = []
    for rec in info.records:
        name = rec["name"]
        numel = max(1, int(np.prod(rec["shape"])))
        nbytes = sum(s["nbytes"] for s in rec["streams"].values())
        form = FORMS[rec["form"]]
        row: dict[str, Any] = {"name": name, "form": rec["form"], "codec": rec["codec"], "bytes": nbytes,
                               "bits_per_weight": 8 * nbytes / numel, "index_role": form.index_role,
                               "weight_role": form.weight_role, "form_params": rec.get("params", {})}
        for role, stream in rec["streams"].items():
            meta = stream["meta"]
            count = int(np.prod(meta.get("shape", [0]))) if meta.get("shape") else 0
            entry: dict[str, Any] = {"bytes": stream["nbytes"], "huffman": meta.get("codec") == "huffman",
                                     "entries": count}
            if info.widths[name].get(role) is not None:
                entry["fixed_bits"] = info.widths[name][role]
            if count:
                stored_bits = meta["stream_bits"] if "stream_bits" in meta else 8 * stream["nbytes"]
                entry["bits_per_entry"] = stored_bits / count
            row[role] = entry
        rows.append(row)
    return {"file_bytes": file_bytes, "header_bytes": info.header_bytes, "tensors": rows}


def build_report(st: RunState, baseline: nn.Module, result: nn.Module, base_acc: float,
                 storage: dict[str, Any], touched: int | None = None) -> dict[str, Any]:
    """The report dict (the contract of ``report.json``), built in one pass."""
    shape = st.data.input_shape
    base_sum, res_sum = model_summary(baseline, shape), model_summary(result, shape)
    res_acc = evaluate(result, st.data.test)["accuracy"]
    if not all(math.isfinite(x) for x in (base_acc, res_acc)):
        raise RecipeError("accuracy is not finite; the model produced NaN outputs")
    latency = None  # filled by latency_report, together with the runtime model's
    dense_bytes = state_dict_bytes(baseline)
    stored = {row["name"]: row for row in storage["tensors"]}
    layers = []
    for s in layer_stats(result, shape):
        layer = s.to_dict()
        row = stored.get(s.weight_key)
        if row is not None:
            layer.update(bits_per_weight=row["bits_per_weight"], codec=row["codec"], form=row["form"],
                         form_params=row["form_params"])
        layers.append(layer)
    report: dict[str, Any] = {
        "torchshrink_version": __version__,
        "recipe": st.recipe.model_dump(mode="json"),
        "seed": st.seed,
        "data": {"name": st.data.name, "train": len(st.data.train), "test": len(st.data.test),
                 "input_shape": list(shape), "num_classes": st.data.num_classes},
        "model": getattr(st.model, "zoo_spec", None),
        "baseline": {"accuracy": base_acc, "macs": base_sum["macs_dense"], **base_sum},
        "result": {"accuracy": res_acc, "macs": res_sum["macs_dense"], **res_sum,
                   "macs_ratio": base_sum["macs_dense"] / max(res_sum["macs_dense"], 1),
                   "weight_compression": base_sum["weight_params"] / max(res_sum["weight_nonzeros"], 1),
                   "param_compression": base_sum["params"] / max(res_sum["nonzero_params"], 1)},
        "size": {"dense_bytes": dense_bytes, **storage, "ratio": dense_bytes / storage["file_bytes"],
                 "roundtrip_exact": True},
        "energy": energy_report(base_sum, res_sum,
                                sum(t["bytes"] for t in storage["tensors"]) if touched is None else touched),
        "layers": layers,
        "latency": latency,
        "history": st.history,
    }
    if latency:  # measured speed-up beside the MAC ratio (structured pruning: latency should follow MACs)
        report["result"]["latency_ratio"] = {b: latency["baseline"][b]["median_ms"] / latency["result"][b]["median_ms"]
                                             for b in latency["baseline"]}
    if st.schedule["steps"]:
        report["schedule"] = st.schedule
    if st.curve:
        report["pruning_curve"] = st.curve
    report.update(st.extra)
    return report
