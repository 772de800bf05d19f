"""The ``torchshrink`` command line: run, auto, compress-hf, recipes, sensitivity, inspect, eval, bench, export.

Bad input ends with a one-line ``error: ...`` on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import math
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.text import Text

from .errors import TorchshrinkError
from .files import check_out_folder

MAX_SEED = 2**63 - 1  # = torchshrink.recipe.MAX_SEED (not imported: it would load torch for --help)
MAX_BATCH = 65536
# Input shape (channels, height, width) of each data set, known without loading it.
DATA_SHAPES: dict[str, tuple[int, int, int]] = {
    "digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}

# The exception types of the click that typer uses (its own vendored copy in typer >= 0.2x,
# the click package before), found through a class typer exports.
_ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make trained PyTorch networks smaller and faster, measured honestly.")
console = Console()
err = Console(stderr=True)

RecipeArg = Annotated[str, typer.Argument(help="recipe file, or the name of a shipped recipe (see `torchshrink recipes`)")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="output directory (default: runs/<recipe name>)")]
SeedOpt = Annotated[Optional[int], typer.Option(min=0, max=MAX_SEED, help="random seed (overrides the recipe's)")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="override a recipe value, e.g. --set data.name=digits --set stages.0.finetune.epochs=5")]


@app.command()
def run(
    recipe: RecipeArg = "default",
    out: OutOpt = None,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run from its checkpoints")] = False,
    seed: SeedOpt = None,
    progress: ProgressOpt = True,
    set_: SetOpt = None,
) -> None:
    """Run a recipe: train or load the baseline, apply each stage, measure, report."""
    from .pipeline import run_recipe
    from .recipe import load_recipe

    r = load_recipe(recipe, set_)
    out = out or Path("runs") / r.name
    check_out_folder(out)
    res = run_recipe(r, out, resume=resume, seed=seed, progress=progress, console=console)
    console.print(f"wrote {res.out / 'report.json'} and {res.out / 'model.tsk'}")


@app.command()
def export(
    file: Annotated[Path, typer.Argument(help="a .tsk file")],
    onnx: Annotated[Path, typer.Option("--onnx", help="the ONNX file to write")],
) -> None:
    """Write a .tsk file as ONNX (slimmed models stay slim) and check it in onnxruntime against PyTorch."""
    from .export import export_onnx

    info = export_onnx(file, onnx)
    console.print(f"wrote {info['path']} ({info['bytes']:,} bytes, opset {info['opset']}); onnxruntime matches "
                  f"PyTorch on a batch of {info['checked_batch']} (max |diff| {info['max_abs_diff']:.2e})")


@app.command()
def auto(
    recipe: RecipeArg = "deep_compression_lenet300",
    budget_bytes: Annotated[Optional[int], typer.Option(min=1, help="model.tsk bytes, header included")] = None,
    budget_latency_ms: Annotated[Optional[float], typer.Option(min=0, help="batch-1 latency of the searched layers")] = None,
    budget_energy_uj: Annotated[Optional[float], typer.Option(min=0, help="estimated energy of the searched layers")] = None,
    budget_macs: Annotated[Optional[float], typer.Option(min=0, max=1, help="fraction of the baseline MACs kept (channel pruning, amc)")] = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    progress: ProgressOpt = True,
    set_: SetOpt = None,
) -> None:
    """Choose each layer's compression by search to meet a budget, then compress and verify (HAQ/AMC style).

    Bytes and energy budgets search per-layer sparsity and k-means bits (technique policy);
    a MAC budget, or a latency budget on a structured (filter-pruning) recipe, searches
    per-layer channel fractions (technique amc).
    """
    from .pipeline import run_recipe
    from .policy.auto import auto_recipe
    from .recipe import load_recipe

    r = auto_recipe(load_recipe(recipe, set_), {"budget_bytes": budget_bytes, "budget_latency_ms": budget_latency_ms,
                                                "budget_energy_uj": budget_energy_uj, "budget_macs": budget_macs})
    out = out or Path("runs") / r.name
    check_out_folder(out)
    res = run_recipe(r, out, seed=seed, progress=progress, console=console)
    if "amc" in res.report:
        m = res.report["amc"]["chosen"]["measured"]
        console.print(f"channel policy: {m['macs']:,} MACs ({m['macs'] / res.report['amc']['baseline_macs']:.1%} of the "
                      f"baseline), {m['latency_ms_b1']:.3f} ms at batch 1, accuracy {m['accuracy']:.4f}")
        console.print(f"wrote {res.out / 'report.json'}, {res.out / 'model.tsk'} and {res.out / 'amc.png'}")
        return
    p = res.report["policy"]
    m = p["chosen"]["measured"]
    console.print(f"policy for {p['budget']:g} {p['unit']}: file {m['file_bytes']:,} bytes, accuracy {m['accuracy']:.4f}")
    if "uniform" in p and "measured" in p["uniform"]:
        u = p["uniform"]["measured"]
        console.print(f"best uniform policy under the same budget: file {u['file_bytes']:,} bytes, "
                      f"accuracy {u['accuracy']:.4f}")
    console.print(f"wrote {res.out / 'report.json'}, {res.out / 'model.tsk'} and {res.out / 'policy.png'}")


@app.command("compress-hf")
def compress_hf(
    path: Annotated[Path, typer.Argument(help="local Hugging Face / sentence-transformers model folder")],
    ratio: Annotated[float, typer.Option(help="fp32 state-dict bytes / model.tsk bytes to reach (> 1)")] = 8.0,
    calibration: Annotated[Optional[Path], typer.Option(help="unlabeled text, one sentence a line "
                                                             "(default: the English text shipped)")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (configs + model.tsk)")] = Path("runs/hf"),
    progress: ProgressOpt = True,
) -> None:
    """Compress a pretrained transformer without labels (GPTQ, per-row grids, knapsack-chosen bits) to --ratio."""
    from .hf import compress_hf as compress, save_compressed

    if not math.isfinite(ratio) or ratio <= 1:
        raise TorchshrinkError(f"--ratio must be a number greater than 1, got {ratio:g}")
    result = compress(path, ratio, calibration, progress=progress)
    info = save_compressed(result, out)
    console.print(f"{path}: {result.dense_bytes:,} fp32 bytes -> {info.path} {info.file_bytes:,} bytes "
                  f"({result.dense_bytes / info.file_bytes:.2f}x); bits per layer: "
                  + ", ".join(f"{b}" for b in result.bits.values()))


@app.command()
def recipes() -> None:
    """List the shipped recipes (usable by name in `run` and `sensitivity`)."""
    from rich.table import Table

    from .recipe import shipped_recipes

    t = Table(title="shipped recipes")
    t.add_column("name")
    t.add_column("description")
    for name, desc in shipped_recipes().items():
        t.add_row(name, desc)
    console.print(t)


@app.command()
def sensitivity(
    recipe: RecipeArg = "default",
    out: OutOpt = None,
    sparsities: Annotated[Optional[str], typer.Option(help="comma-separated grid, e.g. 0,0.5,0.9")] = None,
    layers: Annotated[Optional[str], typer.Option(help="comma-separated layer name patterns")] = None,
    filters: Annotated[bool, typer.Option(
        "--filters", help="prune whole filters (Li et al. 2017 Fig. 2): the grid is the fraction of filters removed")] = False,
    resume: Annotated[bool, typer.Option(help="reuse the baseline checkpoint in OUT")] = False,
    seed: SeedOpt = None,
    progress: ProgressOpt = True,
    set_: SetOpt = None,
) -> None:
    """Prune each layer alone over a grid of sparsities; write a table, JSON and a PNG plot."""
    from .pipeline import prepare, train_baseline
    from .stages import RunState
    from .recipe import load_recipe
    from .sensitivity import sensitivity as analyse
    from .sensitivity import sensitivity_table, write_sensitivity
    from .train import TrainConfig, evaluate

    r = load_recipe(recipe, set_)
    out = out or Path("runs") / f"{r.name}-sensitivity"
    check_out_folder(out)
    grid = _floats(sparsities, "sparsities") if sparsities else r.sensitivity.sparsities
    pats = [p.strip() for p in layers.split(",")] if layers else r.sensitivity.layers
    seed = r.seed if seed is None else seed
    data, model = prepare(r, seed)
    st = RunState(r, data, model, out, seed, resume, progress, console, r.baseline.train or TrainConfig())
    train_baseline(st)
    base = evaluate(model, data.test)["accuracy"]
    if filters:
        from .prune.filters import filter_sensitivity

        curves = filter_sensitivity(model, data.test, data.input_shape, grid, pats, progress=progress)
    else:
        curves = analyse(model, data.test, grid, pats, progress=progress)
    write_sensitivity(curves, out, base)
    console.print(sensitivity_table(curves))
    console.print(f"baseline accuracy {base:.4f}; wrote {out / 'sensitivity.json'} and {out / 'sensitivity.png'}")


@app.command()
def inspect(file: Annotated[Path, typer.Argument(help="a .tsk file (or a .safetensors weights file)")]) -> None:
    """Show each tensor of a model file: codec, shape, nonzeros, bits per weight, bytes, share."""
    from rich.table import Table

    rows, meta = _file_rows(file)
    total = file.stat().st_size
    t = Table(title=f"{file} ({total:,} bytes)")
    for col in ("tensor", "codec", "shape", "params", "nonzeros", "bits/weight", "bytes", "share"):
        t.add_column(col, justify="left" if col in ("tensor", "codec", "shape") else "right")
    for r in rows:
        t.add_row(r["name"], r["codec"], "×".join(map(str, r["shape"])) or "scalar", f"{r['numel']:,}",
                  f"{r['nonzeros']:,}", f"{r['bits_per_weight']:.2f}", f"{r['bytes']:,}", f"{r['share']:.1%}")
    console.print(t)
    stored = sum(r["bytes"] for r in rows)
    console.print(f"tensor data {stored:,} bytes, header and metadata {total - stored:,} bytes")
    for k, v in meta.items():
        console.print(f"[dim]{k}[/dim]: {str(v)[:200]}", soft_wrap=True)


def _file_rows(file: Path) -> tuple[list[dict], dict]:
    if file.suffix == ".tsk":
        from .format import inspect_rows, read_tsk

        f = read_tsk(file)
        return inspect_rows(file), {"format": f.version, "architecture": f.zoo_spec, "surgery": f.surgery}
    from .weights import read_weights

    tensors, meta = read_weights(file)
    total = file.stat().st_size
    rows = [{"name": k, "codec": f"dense {str(v.dtype).removeprefix('torch.')}", "shape": list(v.shape),
             "numel": v.numel(), "nonzeros": int(v.count_nonzero()), "bits_per_weight": 8.0 * v.element_size(),
             "bytes": v.numel() * v.element_size(), "share": v.numel() * v.element_size() / total}
            for k, v in tensors.items()]
    return rows, meta


def load_model_file(file: Path):
    """A plain PyTorch model from a .tsk or .safetensors file written by torchshrink."""
    return _load_with_spec(file)[0]


def _load_with_spec(file: Path) -> tuple[Any, dict | None]:
    """(model, the zoo_spec the file records or None) of a .tsk or .safetensors file."""
    if file.suffix == ".tsk":
        from .format import load, read_tsk

        f = read_tsk(file)
        return load(f), f.zoo_spec
    from .weights import model_from_weights

    model = model_from_weights(file)[0]
    return model, getattr(model, "zoo_spec", None)


def _recorded_input_shape(spec: Any) -> tuple[int, int, int] | None:
    """The (channels, height, width) a zoo_spec records, or None when it records none that is usable."""
    shape = spec.get("input_shape") if isinstance(spec, dict) else None
    if (isinstance(shape, list) and len(shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        return tuple(shape)  # type: ignore[return-value]
    return None


def _shape_text(shape: Any) -> str:
    return "x".join(map(str, shape))


def _pick_data(file: Path, spec: Any, data: str | None) -> str:
    """The data set to evaluate on: ``data`` if its images fit the model, else the one known set that does."""
    from .data import list_datasets

    shape = _recorded_input_shape(spec)
    known = {n: DATA_SHAPES[n] for n in list_datasets() if n in DATA_SHAPES}
    if data is not None:
        if shape is not None and data in known and known[data] != shape:
            raise TorchshrinkError(f"{file} takes {_shape_text(shape)} inputs, but {data} images are "
                                   f"{_shape_text(known[data])}; pass a --data set of the model's shape")
        return data
    listing = ", ".join(f"{n} {_shape_text(s)}" for n, s in known.items())
    if shape is None:
        raise TorchshrinkError(f"{file} records no input shape; pass --data (known data sets: {listing})")
    fits = [n for n, s in known.items() if s == shape]
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise TorchshrinkError(f"{file} takes {_shape_text(shape)} inputs, the shape of {' and '.join(fits)}; "
                               f"choose one with --data")
    raise TorchshrinkError(f"{file} takes {_shape_text(shape)} inputs and no known data set has that shape "
                           f"({listing}); pass --data")


def _check_fits(file: Path, spec: Any, bundle: Any) -> None:
    """Refuse a loaded data set whose image shape or class count differs from the model's."""
    shape = _recorded_input_shape(spec)
    if shape is not None and tuple(bundle.input_shape) != shape:
        raise TorchshrinkError(f"{file} takes {_shape_text(shape)} inputs, but {bundle.name} images are "
                               f"{_shape_text(bundle.input_shape)}; pass a --data set of the model's shape")
    classes = spec.get("num_classes") if isinstance(spec, dict) else None
    if isinstance(classes, int) and classes != bundle.num_classes:
        raise TorchshrinkError(f"{file} predicts {classes} classes, but {bundle.name} has {bundle.num_classes}")


DownloadOpt = Annotated[bool, typer.Option("--download", help="fetch missing data files (MNIST, CIFAR-10)")]


@app.command("eval")
def eval_(
    file: Annotated[Path, typer.Argument(help="a .tsk (or .safetensors) file written by `torchshrink run`")],
    data: Annotated[Optional[str], typer.Option(
        help="data set name (default: the one whose image shape the file records)")] = None,
    root: Annotated[Optional[Path], typer.Option(help="data directory (MNIST, CIFAR-10)")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="evaluate the first N test samples")] = None,
    download: DownloadOpt = False,
) -> None:
    """Evaluate a model file's accuracy on a data set's test split."""
    from .data import load_data
    from .train import evaluate

    model, spec = _load_with_spec(file)
    data = _pick_data(file, spec, data)
    bundle = load_data(data, root, download=download, limit=limit)
    _check_fits(file, spec, bundle)
    res = evaluate(model, bundle.test)
    console.print(f"{file}: accuracy {res['accuracy']:.4f} on {len(bundle.test)} {data} test samples "
                  f"(loss {res['loss']:.4f})")


@app.command()
def bench(
    file: Annotated[Path, typer.Argument(help="a .tsk file")],
    batch: Annotated[str, typer.Option(help=f"comma-separated batch sizes (1 .. {MAX_BATCH})")] = "1,64",
    data: Annotated[Optional[str], typer.Option(help="check predictions on this data set's test split")] = None,
    root: Annotated[Optional[Path], typer.Option(help="data directory (MNIST, CIFAR-10)")] = None,
    repeats: Annotated[int, typer.Option(min=3, max=100_000, help="at least this many timed runs per model")] = 100,
    max_seconds: Annotated[float, typer.Option(min=0.1, max=3600, help="time limit per batch size")] = 10.0,
    remeasure: Annotated[bool, typer.Option(help="forget this machine's cached kernel/dense decisions first")] = False,
    download: DownloadOpt = False,
    json_: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Latency of the runtime model vs the decoded dense PyTorch model, measured together until stable."""
    import json

    from .format import load, read_tsk
    from .measure import compare_latency, weight_bytes_touched
    from .runtime import dispatch

    batches = [int(b) for b in _floats(batch, "batch", whole=True, high=MAX_BATCH)]
    f = read_tsk(file)
    spec = f.zoo_spec
    if not spec:
        raise TorchshrinkError(f"{file} records no architecture (zoo_spec); bench needs a zoo model file")
    shape = _recorded_input_shape(spec)
    if shape is None:
        got = repr(spec.get("input_shape", "nothing"))
        raise TorchshrinkError(f"{file}: its zoo_spec records no usable input_shape (got {got[:60]}); "
                               "bench needs [channels, height, width] of positive ints")
    if data:
        _pick_data(file, spec, data)  # refuse a data set of another image shape before timing anything
    if remeasure:
        dispatch.clear_cache()
    fast, plain = load(f, batches=tuple(batches)), load(f, dense=True)
    rows = []
    for b in batches:
        m = compare_latency({"dense": plain, "runtime": fast}, shape, b, min_runs=repeats, max_seconds=max_seconds)
        d, c = m["models"]["dense"], m["models"]["runtime"]
        rows.append({"batch": b, "dense_ms": d["median_ms"], "compressed_ms": c["median_ms"],
                     "speedup": d["median_ms"] / c["median_ms"], "dense": d, "runtime": c,
                     "stable": m["stable"], "noisy": m["noisy"], "rounds": m["rounds"],
                     "paths": dispatch.path_at(fast, b),
                     "weight_bytes": {"dense": weight_bytes_touched(plain, b),
                                      "compressed": weight_bytes_touched(fast, b)}})
    result = {"file": str(file), "input_shape": list(shape), "rows": rows,
              "weight_bytes": rows[0]["weight_bytes"], "noisy": any(r["noisy"] for r in rows),
              "dispatch": dispatch.paths(fast)}
    if data:
        from .data import load_data

        bundle = load_data(data, root, download=download)
        _check_fits(file, spec, bundle)
        x = bundle.test.tensors[0]
        with __import__("torch").no_grad():
            result["prediction_agreement"] = float((fast(x).argmax(1) == plain(x).argmax(1)).float().mean())
    if json_:
        print(json.dumps(result))
        return
    _print_bench(file, result)


def _print_bench(file: Path, result: dict) -> None:
    from rich.table import Table

    from .runtime.dispatch import layer_counts

    t = Table(title=f"{file}: runtime vs decoded dense PyTorch (interleaved, repeated until the medians are stable)")
    for col in ("batch", "dense ms (min / median / spread)", "runtime ms (min / median / spread)", "speed-up",
                "stable", "paths (kernel / dense layers)"):
        t.add_column(col, justify="right")
    for r in result["rows"]:
        d, c = r["dense"], r["runtime"]
        kernel, dense = layer_counts(r["paths"])
        t.add_row(str(r["batch"]), f"{d['min_ms']:.4f} / {d['median_ms']:.4f} / {d['spread']:.0%}",
                  f"{c['min_ms']:.4f} / {c['median_ms']:.4f} / {c['spread']:.0%}", f"{r['speedup']:.2f}x",
                  "yes" if r["stable"] else "no", f"{kernel} / {dense}")
    console.print(t)
    p = Table(title="measured dispatch: the path each layer runs (kernel or its decoded dense twin)")
    for col in ("layer", *(f"batch {r['batch']}" for r in result["rows"])):
        p.add_column(col)
    layers = list(dict.fromkeys(k for r in result["rows"] for k in r["paths"]))
    for name in layers:
        p.add_row(name, *(r["paths"].get(name, "—") for r in result["rows"]))
    if layers:
        console.print(p)
    for r in result["rows"]:
        wb = r["weight_bytes"]
        console.print(f"batch {r['batch']}: weight bytes touched per forward pass: dense {wb['dense']:,}, "
                      f"runtime {wb['compressed']:,}")
    if result["noisy"]:
        console.print("[yellow]warning:[/yellow] the machine was noisy during this run (a median did not settle "
                      "or the spread exceeded 50%); the speed-ups may be off. Rerun on a quieter machine.")
    if "prediction_agreement" in result:
        console.print(f"predictions identical to the decoded dense model on the test set: "
                      f"{result['prediction_agreement']:.2%}")


def _floats(text: str, what: str, whole: bool = False, high: int | None = None) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TorchshrinkError(f"--{what} must be comma-separated numbers, got {text!r}") from None
    if whole:
        if not vals or any(not math.isfinite(v) or v < 1 or v != int(v) for v in vals):
            raise TorchshrinkError(f"--{what} must be comma-separated whole numbers >= 1, got {text!r}")
        if high is not None and any(v > high for v in vals):
            raise TorchshrinkError(f"--{what} values must be at most {high:,}, got {text!r}")
        return vals
    if not vals or any(not 0 <= v < 1 for v in vals):
        raise TorchshrinkError(f"--{what} values must be in [0, 1), got {text!r}")
    return vals


def _fail(message: str) -> None:
    """Print ``error: message`` as one line on stderr and exit with code 2."""
    err.print(Text.assemble(("error:", "red"), " ", " ".join(str(message).split())), soft_wrap=True)
    sys.exit(2)


def _where(e: BaseException) -> str:
    """``file:line`` of the innermost frame that raised ``e``."""
    frames = traceback.extract_tb(e.__traceback__)
    return f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""


def _command() -> str:
    return " ".join(["torchshrink", *sys.argv[1:2]])


def main() -> None:
    """Entry point: run the app; bad input ends with one line ``error: ...`` on stderr and exit code 2.

    Typer runs with ``standalone_mode=False`` so that usage errors (an unknown option, a
    missing or bad value) come here instead of being drawn as a box; ``--help`` and
    ``typer.Exit`` give their exit code.
    """
    try:
        code = app(standalone_mode=False)
    except TorchshrinkError as e:
        _fail(str(e))
    except _ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `torchshrink`: the help, as before
            console.print(e.format_message(), highlight=False, markup=False)
            sys.exit(2)
        message = e.format_message()
        ctx = getattr(e, "ctx", None) if isinstance(e, _UsageError) else None
        if ctx is not None:
            message += f" (see '{ctx.command_path} --help')"
        _fail(message)
    except typer.Abort:
        err.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        code = 130
    except OSError as e:  # a file or folder the user named; without a filename it is not one
        if e.filename is None:
            raise
        names = " -> ".join(repr(str(n)) for n in (e.filename, e.filename2) if n is not None)
        _fail(f"{e.strerror or type(e).__name__}: {names}")
    except MemoryError as e:
        _fail(f"ran out of memory in '{_command()}' (MemoryError{_where(e)}); "
              "the input (recipe, --set value, file or option) asks for too much")
    except RecursionError as e:
        _fail(f"input nested too deeply for '{_command()}' (RecursionError{_where(e)})")
    if code == 130:
        err.print("interrupted; rerun with --resume to continue")
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


if __name__ == "__main__":
    main()
