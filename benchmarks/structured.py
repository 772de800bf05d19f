"""Structured pruning on 15 torchvision architectures: does the dependency graph cope, and does it pay?

For each model (random weights, no download, a small input): trace the channel dependency
graph, prune 30 % of the channels of every prunable group by L1 filter norm (Li et al.
2017), then check that the forward runs with the same output shape, that save -> load
(the plan replayed on a fresh model) gives identical outputs, and that the ONNX export
matches in onnxruntime. Latency of the dense and the pruned model is timed in the same
run, interleaved (``_timing.median_ms``), at batch 1 and 16.

One JSON row per model: ``model``, ``ok``, ``macs_ratio`` and ``params_ratio`` (dense /
pruned), ``latency_ratio_b1`` / ``latency_ratio_b16`` (dense ms / pruned ms), ``onnx_ok``,
``roundtrip_ok``, ``error``, plus ``groups`` and ``tracer``.

Usage: ``python benchmarks/structured.py [--json] [--models resnet18,vgg11_bn] [--size 64] [--quick]``.
torchvision is a dev dependency (``pip install -e .[dev]``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from _timing import median_ms
from torch import nn

from torchshrink.export import export_onnx
from torchshrink.format import load, read_tsk, save
from torchshrink.measure import model_summary
from torchshrink.prune.filters import checked_apply, filter_prune_plan
from torchshrink.surgery.plan import replay_plan
from torchshrink.surgery.torchvision_models import torchvision_models as shim_torchvision_models

MODELS = ("resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
          "efficientnet_b0", "densenet121", "shufflenet_v2_x1_0", "regnet_y_400mf", "squeezenet1_0", "vgg11_bn",
          "googlenet", "mnasnet1_0", "convnext_tiny")


def torchvision_models():
    models = shim_torchvision_models()
    if models is None:
        sys.exit("benchmarks/structured.py needs torchvision (the dev extra)")
    return models


def build(models, name: str) -> nn.Module:
    kwargs = {"weights": None, "num_classes": 10}
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    torch.manual_seed(0)
    return getattr(models, name)(**kwargs).eval()


def row(models, name: str, size: int, rounds: int, repeats: int, tmp: Path) -> dict:
    out = {"model": name, "ok": False, "macs_ratio": None, "params_ratio": None, "latency_ratio_b1": None,
           "latency_ratio_b16": None, "onnx_ok": False, "roundtrip_ok": False, "error": None}
    shape = (3, size, size)
    try:
        model = build(models, name)
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always")
            fp = filter_prune_plan(model, shape, 0.3)
        out.update(groups=len(fp.channels), tracer=fp.graph.tracer, left_alone=sorted({str(w.message) for w in notes}))
        pruned = checked_apply(model, fp.op, shape).eval()
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            same_shape = pruned(x).shape == model(x).shape
        a, b = model_summary(model, shape), model_summary(pruned, shape)
        out["macs_ratio"] = a["macs_dense"] / b["macs_dense"]
        out["params_ratio"] = a["params"] / b["params"]
        save(pruned, tmp / f"{name}.tsk")
        fresh = replay_plan(build(models, name), read_tsk(tmp / f"{name}.tsk").surgery)
        loaded = load(tmp / f"{name}.tsk", model=fresh, dense=True)
        with torch.no_grad():
            out["roundtrip_ok"] = bool(torch.equal(loaded(x), pruned(x)))
        try:
            export_onnx(pruned, tmp / f"{name}.onnx", input_shape=shape)
            out["onnx_ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported in the row
            out["error"] = f"onnx: {' '.join(str(exc).split())[:200]}"
        for batch in (1, 16):
            xb = torch.randn(batch, *shape)
            with torch.inference_mode():
                ms = median_ms({"dense": lambda: model(xb), "pruned": lambda: pruned(xb)}, rounds, repeats)
            out[f"latency_ratio_b{batch}"] = ms["dense"] / ms["pruned"]
        out["ok"] = bool(same_shape and out["roundtrip_ok"] and out["onnx_ok"])
    except Exception as exc:  # noqa: BLE001 - one model's failure is a row, not the end of the run
        out["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON row per model")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--size", type=int, default=64, help="input height and width")
    ap.add_argument("--quick", action="store_true", help="fewer timing rounds")
    args = ap.parse_args()
    models = torchvision_models()
    rounds, repeats = (2, 2) if args.quick else (5, 3)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name in args.models.split(","):
            t0 = time.perf_counter()
            r = row(models, name, args.size, rounds, repeats, Path(d))
            r["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(r)
            if args.json:
                print(json.dumps(r), flush=True)
            else:
                f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
                print(f"{name:20s} ok={r['ok']!s:5s} macs {f(r['macs_ratio'])}x params {f(r['params_ratio'])}x "
                      f"latency b1 {f(r['latency_ratio_b1'])}x b16 {f(r['latency_ratio_b16'])}x "
                      f"onnx={r['onnx_ok']} roundtrip={r['roundtrip_ok']} {r['error'] or ''}", flush=True)
    if not args.json:
        print(f"{sum(r['ok'] for r in rows)} of {len(rows)} models ok")


if __name__ == "__main__":
    main()
