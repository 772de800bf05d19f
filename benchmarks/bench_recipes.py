"""`torchshrink bench` on a file of every shipped recipe, run twice: is the runtime never slower, and repeatable?

For each shipped recipe (or those named by ``--recipes``) the pipeline makes its
``model.tsk`` quickly, the way ``tests/test_default_recipe.py`` checks every recipe: on
digits, baseline 1 epoch, each stage's training 3 epochs (``--epochs``), no latency
measurement in the report. The weights are then not the paper's (short training), but
the file has the recipe's forms, sparsity pattern kinds and layer shapes, which is what
the runtime's speed depends on. Then ``torchshrink bench FILE --json`` runs twice, each
in a fresh process (the second reads the dispatch cache the first wrote and re-verifies
it, as a user's second run would), and the script prints per recipe and batch size the
two speedups (decoded dense ms / runtime ms, medians), how many layers ran a kernel, whether
the runtime was slower ("no": both >= 1.0; "within noise": the lower one within 3 % of 1)
whether the two runs agree within 20 % (``|a - b| / max(a, b) <= 0.2``), and the share of
digits test images on which the runtime model predicts what the decoded dense model does.

Time it only on a quiet machine (``flock -x /tmp/cpu.lock``); making the files is not
timed and can run first with ``--make-only``.

Usage: ``python benchmarks/bench_recipes.py [--json] [--recipes a,b] [--batch 1,64] [--epochs 3]
[--work DIR] [--make-only] [--repeats 100] [--max-seconds 5]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: Runs of bench that differ by more than this fraction (of the larger) disagree.
AGREEMENT = 0.2
#: A speed-up this close below 1 is "within noise": two benches of one file, and files whose
#: every layer runs dense (the runtime model then computes exactly what the dense one does),
#: differ by this much on a quiet machine.
NOISE = 0.03


def make_files(name: str, work: Path, epochs: int) -> list[tuple[str, Path]]:
    """``work/name/model.tsk`` made by recipe ``name`` with short training on digits (kept if already there).

    With it come a comparison's method files (``compare/<label>.tsk``, named ``name/label``;
    not the unchanged baseline's), since those are the forms such a recipe is about.
    """
    from rich.console import Console

    from torchshrink.pipeline import run_recipe
    from torchshrink.recipe import load_recipe, short_run_overrides

    out, recipe = work / name, load_recipe(name)
    if not (out / "model.tsk").exists():
        sets = short_run_overrides(recipe, epochs)
        run_recipe(load_recipe(name, sets), out, progress=False, console=Console(file=io.StringIO()))
    baselines = {s.include_baseline for s in recipe.stages if getattr(s, "include_baseline", None)}
    methods = [f for f in sorted((out / "compare").glob("*.tsk"))
               if not any(f.stem == b or f.stem.endswith(f"-{b}") for b in baselines)]
    return [(name, out / "model.tsk")] + [(f"{name}/{f.stem}", f) for f in methods]


def bench_once(file: Path, batch: str, repeats: int, max_seconds: float) -> dict:
    """One ``torchshrink bench --json`` in a fresh process."""
    cmd = [sys.executable, "-m", "torchshrink.cli", "bench", str(file), "--batch", batch, "--repeats", str(repeats),
           "--max-seconds", str(max_seconds), "--data", "digits", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(name: str, runs: list[dict]) -> list[dict]:
    """One row per batch size: both speedups, never-slower and agreement flags, the paths of the last run."""
    from torchshrink.runtime.dispatch import WHOLE_MODEL, layer_counts

    if any("error" in r for r in runs):
        return [{"recipe": name, "error": next(r["error"] for r in runs if "error" in r)}]
    rows = []
    for a, b in zip(runs[0]["rows"], runs[1]["rows"]):
        s = [a["speedup"], b["speedup"]]
        kernels, _ = layer_counts(b["paths"])
        slower = "no" if min(s) >= 1.0 else "within noise" if min(s) >= 1.0 - NOISE else "yes"
        rows.append({"recipe": name, "batch": a["batch"], "speedup": [round(v, 3) for v in s],
                     "never_slower": min(s) >= 1.0, "slower": slower, "kernel_layers": kernels,
                     "whole_model": b["paths"].get(WHOLE_MODEL, "dense"),
                     "agree": abs(s[0] - s[1]) / max(s) <= AGREEMENT, "noisy": a["noisy"] or b["noisy"],
                     "predictions_equal": min(r["prediction_agreement"] for r in runs), "paths": b["paths"]})
    return rows


def main() -> None:
    from torchshrink.recipe import shipped_recipes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="", help="comma-separated recipe names (default: every shipped recipe)")
    ap.add_argument("--batch", default="1,64")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs of each stage when making a file")
    ap.add_argument("--work", type=Path, default=None, help="where the files are made (reused if present)")
    ap.add_argument("--make-only", action="store_true", help="make the files, time nothing")
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--max-seconds", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    names = [n for n in args.recipes.split(",") if n] or sorted(shipped_recipes())
    unknown = sorted(set(names) - set(shipped_recipes()))
    if unknown:
        print(f"unknown recipe(s): {', '.join(unknown)}; shipped: {', '.join(sorted(shipped_recipes()))}")
        sys.exit(2)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-recipes-"))
    rows: list[dict] = []
    for name in names:
        try:
            files = make_files(name, work, args.epochs)
        except Exception as e:  # noqa: BLE001 - one recipe failing to build is reported, the others still run
            rows.append({"recipe": name, "error": f"making the file: {type(e).__name__}: {e}"[:200]})
            continue
        for label, file in files:
            if args.make_only:
                rows.append({"recipe": label, "file": str(file), "bytes": file.stat().st_size})
                continue
            rows += compare(label, [bench_once(file, args.batch, args.repeats, args.max_seconds) for _ in range(2)])
    if args.json:
        print(json.dumps({"work": str(work), "rows": rows}))
        return
    for r in rows:
        if "speedup" in r:
            a, b = r["speedup"]
            print(f"{r['recipe']:36s} b{r['batch']:<3d} {a:6.2f}x {b:6.2f}x  kernel layers {r['kernel_layers']:3d} (model: {r['whole_model']:6s})  "
                  f"slower: {r['slower']:12s} agree: {r['agree']!s:5s} same predictions: {r['predictions_equal']:7.2%}"
                  f"{'  (noisy)' if r['noisy'] else ''}")
        else:
            print(f"{r['recipe']:36s} {r.get('error') or r.get('file')}")


if __name__ == "__main__":
    main()
