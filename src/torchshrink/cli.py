"""The ``torchshrink`` command line: run, recipes, sensitivity, inspect, eval.

Bad input ends with a one-line ``error: ...`` on stderr and exit code 2; no traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .errors import TorchshrinkError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make trained PyTorch networks smaller and faster, measured honestly.")
console = Console()
err = Console(stderr=True)

RecipeArg = Annotated[str, typer.Argument(help="recipe file, or the name of a shipped recipe (see `torchshrink recipes`)")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="output directory (default: runs/<recipe name>)")]
SeedOpt = Annotated[Optional[int], typer.Option(help="random seed (overrides the recipe's)")]
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
    res = run_recipe(r, out, resume=resume, seed=seed, progress=progress, console=console)
    console.print(f"wrote {res.out / 'report.json'} and {res.out / 'model.tsk'}")


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
    if file.suffix == ".tsk":
        from .format import load

        return load(file)
    from .weights import model_from_weights

    return model_from_weights(file)[0]


@app.command("eval")
def eval_(
    file: Annotated[Path, typer.Argument(help="a .tsk (or .safetensors) file written by `torchshrink run`")],
    data: Annotated[str, typer.Option(help="data set name")] = "digits",
    root: Annotated[Optional[Path], typer.Option(help="data directory (MNIST, CIFAR-10)")] = None,
    limit: Annotated[Optional[int], typer.Option(help="evaluate the first N test samples")] = None,
) -> None:
    """Evaluate a model file's accuracy on a data set's test split."""
    from .data import load_data
    from .train import evaluate

    model = load_model_file(file)
    bundle = load_data(data, root, limit=limit)
    res = evaluate(model, bundle.test)
    console.print(f"{file}: accuracy {res['accuracy']:.4f} on {len(bundle.test)} {data} test samples "
                  f"(loss {res['loss']:.4f})")


@app.command()
def bench(
    file: Annotated[Path, typer.Argument(help="a .tsk file")],
    batch: Annotated[str, typer.Option(help="comma-separated batch sizes")] = "1,64",
    data: Annotated[Optional[str], typer.Option(help="check predictions on this data set's test split")] = None,
    root: Annotated[Optional[Path], typer.Option(help="data directory (MNIST, CIFAR-10)")] = None,
    repeats: Annotated[int, typer.Option(min=3, help="timed runs per batch size")] = 100,
    json_: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Latency of the compressed runtime model vs the decoded dense PyTorch model, in one process."""
    import json

    from .format import load, read_tsk
    from .measure import latency_ms

    batches = [int(b) for b in _floats(batch, "batch", whole=True)]
    spec = read_tsk(file).zoo_spec
    if not spec:
        raise TorchshrinkError(f"{file} records no architecture (zoo_spec); bench needs a zoo model file")
    shape = tuple(spec["input_shape"])
    fast, plain = load(file), load(file, dense=True)
    rows = []
    for b in batches:
        d = latency_ms(plain, shape, b, repeats=repeats)["median_ms"]
        c = latency_ms(fast, shape, b, repeats=repeats)["median_ms"]
        rows.append({"batch": b, "dense_ms": d, "compressed_ms": c, "speedup": d / c})
    result = {"file": str(file), "input_shape": list(shape), "rows": rows,
              "weight_bytes": {"dense": _weight_bytes(plain), "compressed": _weight_bytes(fast)}}
    if data:
        from .data import load_data

        x = load_data(data, root).test.tensors[0]
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


def _floats(text: str, what: str, whole: bool = False) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TorchshrinkError(f"--{what} must be comma-separated numbers, got {text!r}") from None
    if whole:
        if not vals or any(v < 1 or v != int(v) for v in vals):
            raise TorchshrinkError(f"--{what} must be comma-separated whole numbers >= 1, got {text!r}")
        return vals
    if not vals or any(not 0 <= v < 1 for v in vals):
        raise TorchshrinkError(f"--{what} values must be in [0, 1), got {text!r}")
    return vals


def main() -> None:
    """Entry point: run the app, turning torchshrink errors into one line and exit code 2."""
    try:
        app()
    except TorchshrinkError as e:
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted; rerun with --resume to continue")
        sys.exit(130)


if __name__ == "__main__":
    main()
