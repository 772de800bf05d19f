"""Runtime kernels vs dense PyTorch (and the faster paths a user would try) on this CPU, in one run.

Each kind is one module of ``benchmarks/kinds/`` (see its docstring for what is timed):
``sparse`` (EIE-style sparse shared weights vs dense and CSR torch) and ``pq`` (product
quantization lookup tables), and every kind registered in ``kinds.KINDS``. Where a row
has ``bf16_ms`` and ``int8_ms`` they are torch's own bf16 matmul and ``torch._int_mm``
(``_timing.baselines``). Kernel weights are built as the runtime gets them: the technique
packs the weight, then ``from_packed`` lays it out.

Inputs are post-ReLU-like: ``|N(0, 1)|`` with a fraction ``--input-density`` of entries
nonzero (default 0.5, what a ReLU gives). Every method is warmed up first (numba
compilation excluded); then ``--rounds`` rounds each time every method ``--repeats``
times in a row, so a noisy period hits all methods alike; the reported figure is the
median of all samples. Threads: torch and numba each use every available core.

Usage: ``python benchmarks/kernels.py [--kind sparse,pq] [--shapes 4096x4096] [--quick] [--json] [--input-density 0.5]``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numba
import torch
from kinds import KINDS

from torchshrink.runtime._common import available_cores

QUICK_SHAPES = [(512, 1024)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON list of rows instead of tables")
    parser.add_argument("--quick", action="store_true", help="one small shape, few repeats (smoke run)")
    parser.add_argument("--kind", default=",".join(KINDS), help=f"comma-separated kinds (default all: {','.join(KINDS)})")
    parser.add_argument("--shapes", default=None, help="comma-separated OUTxIN shapes for the kinds that take them, "
                        "e.g. 4096x4096 (default: each kind's own)")
    parser.add_argument("--input-density", type=float, default=0.5, help="fraction of nonzero inputs (default 0.5)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if not 0.0 <= args.input_density <= 1.0:
        parser.error("--input-density must be in [0, 1]")
    kinds = [k.strip() for k in args.kind.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown --kind {', '.join(unknown)}; expected some of {', '.join(KINDS)}")
    try:
        given = [tuple(int(v) for v in t.lower().split("x")) for t in args.shapes.split(",")] if args.shapes else None
    except ValueError:
        parser.error(f"--shapes must look like 4096x4096,1000x4096; got {args.shapes!r}")
    if given is not None and any(len(t) != 2 or min(t) < 1 for t in given):
        parser.error(f"--shapes must look like 4096x4096,1000x4096; got {args.shapes!r}")
    args.shapes = QUICK_SHAPES if args.quick else given
    if args.quick:
        args.rounds, args.repeats = 2, 3
    gen = torch.Generator().manual_seed(0)
    rows = [row for k in kinds for row in KINDS[k].rows(args, gen)]
    if args.json:
        json.dump(rows, sys.stdout)
        print()
        return 0
    cores = available_cores()
    print(f"torch threads {torch.get_num_threads()}, numba threads {min(numba.get_num_threads(), cores)}, cores {cores}")
    for k in kinds:
        KINDS[k].print_rows([r for r in rows if r["kind"] == k])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
