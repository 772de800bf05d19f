"""The ``torchshrink`` command line: run, auto, recipes, sensitivity, inspect, eval, bench.

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
def auto(
    recipe: RecipeArg = "deep_compression_lenet300",
    budget_bytes: Annotated[Optional[int], typer.Option(min=1, help="model.tsk bytes, header included")] = None,
    budget_latency_ms: Annotated[Optional[float], typer.Option(min=0, help="batch-1 latency of the searched layers")] = None,
    budget_energy_uj: Annotated[Optional[float], typer.Option(min=0, help="estimated energy of the searched layers")] = None,
    out: OutOpt = None,
    seed: SeedOpt = None,
    progress: ProgressOpt = True,
    set_: SetOpt = None,
) -> None:
    """Choose each layer's sparsity and bits by search to meet a budget, then compress and verify (HAQ/AMC style)."""
    from .pipeline import run_recipe
    from .policy.auto import auto_recipe
    from .recipe import load_recipe

    r = auto_recipe(load_recipe(recipe, set_), {"budget_bytes": budget_bytes, "budget_latency_ms": budget_latency_ms,
                                                "budget_energy_uj": budget_energy_uj})
    out = out or Path("runs") / r.name
    check_out_folder(out)
    res = run_recipe(r, out, seed=seed, progress=progress, console=console)
    p = res.report["policy"]
    m = p["chosen"]["measured"]
    console.print(f"policy for {p['budget']:g} {p['unit']}: file {m['file_bytes']:,} bytes, accuracy {m['accuracy']:.4f}")
    if "uniform" in p and "measured" in p["uniform"]:
        u = p["uniform"]["measured"]
        console.print(f"best uniform policy under the same budget: file {u['file_bytes']:,} bytes, "
                      f"accuracy {u['accuracy']:.4f}")
    console.print(f"wrote {res.out / 'report.json'}, {res.out / 'model.tsk'} and {res.out / 'policy.png'}")


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
    repeats: Annotated[int, typer.Option(min=3, max=100_000, help="timed runs per batch size")] = 100,
    download: DownloadOpt = False,
    json_: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Latency of the compressed runtime model vs the decoded dense PyTorch model, in one process."""
    import json

    from .format import load, read_tsk
    from .measure import latency_ms

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
    fast, plain = load(f), load(f, dense=True)
    rows = []
    for b in batches:
        d = latency_ms(plain, shape, b, repeats=repeats)["median_ms"]
        c = latency_ms(fast, shape, b, repeats=repeats)["median_ms"]
        rows.append({"batch": b, "dense_ms": d, "compressed_ms": c, "speedup": d / c})
    result = {"file": str(file), "input_shape": list(shape), "rows": rows,
              "weight_bytes": {"dense": _weight_bytes(plain), "compressed": _weight_bytes(fast)}}
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
    from rich.table import Table

    t = Table(title=f"{file}: compressed runtime vs dense PyTorch (median of {repeats})")
    for col in ("batch", "dense ms", "compressed ms", "speed-up"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["batch"]), f"{r['dense_ms']:.4f}", f"{r['compressed_ms']:.4f}", f"{r['speedup']:.2f}x")
    console.print(t)
    wb = result["weight_bytes"]
    console.print(f"weight bytes touched per inference: dense {wb['dense']:,}, compressed {wb['compressed']:,}")
    if "prediction_agreement" in result:
        console.print(f"predictions identical on {data} test set: {result['prediction_agreement']:.2%}")


def _weight_bytes(model) -> int:
    """Bytes of weights a forward pass reads: kernel data of runtime modules, stored tensors otherwise."""
    if hasattr(model, "weight_bytes"):
        bias = getattr(model, "bias", None)
        return model.weight_bytes + (0 if bias is None else bias.numel() * 4)
    own = sum(p.numel() * p.element_size() for p in model.parameters(recurse=False))
    return own + sum(_weight_bytes(c) for c in model.children())


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
