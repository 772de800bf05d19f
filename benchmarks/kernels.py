"""Runtime kernels vs dense and CSR PyTorch on this CPU, all timed in one run.

Sparse shared-weight layers (EIE): for each (out x in) shape, weight density and batch
size, the median latency of

* ``dense``       -- ``torch.nn.functional.linear(x, W_hat)`` in float32,
* ``csr``         -- ``torch.sparse_csr_tensor`` ``@`` the input (``W @ x`` for batch 1,
  ``W @ x.T`` with ``x.T`` made contiguous before timing for batches),
* ``torchshrink`` -- :func:`torchshrink.runtime.shared_matmul` (4-bit codebook:
  k-means weight sharing, :class:`torchshrink.quantize.SharedWeights`),

where ``W_hat`` is the decoded shared-weight matrix, so all three compute the same
function. Product quantization (Q-CNN): ``dense`` vs :func:`torchshrink.runtime.pq_matmul`
at sub-vector lengths 4 and 8 with 256 codewords (:class:`torchshrink.quantize.ProductQuantized`,
k-means with 2 Lloyd iterations; the values do not change the kernel's speed). Kernel
weights are built as the runtime gets them: the technique packs the weight, then
``from_packed`` lays it out.

Inputs are post-ReLU-like: ``|N(0, 1)|`` with a fraction ``--input-density`` of entries
nonzero (default 0.5, what a ReLU gives). Every method is warmed up first (numba
compilation excluded); then ``--rounds`` rounds each time every method ``--repeats``
times in a row, so a noisy period hits all methods alike; the reported figure is the
median of all samples. Threads: torch and numba each use every available core.

Usage: ``python benchmarks/kernels.py [--quick] [--json] [--input-density 0.5]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import numba
import torch
import torch.nn.functional as F

from torchshrink.quantize import ProductQuantized, SharedWeights
from torchshrink.runtime import PQKernel, SharedWeightsKernel, pq_matmul, shared_matmul
from torchshrink.runtime._common import available_cores

SHAPES = [(1000, 4096), (4096, 4096), (4096, 9216)]
DENSITIES = [0.05, 0.10, 0.30]
BATCHES = [1, 64]
SUBVECTORS = [4, 8]
QUICK_SHAPES = [(512, 1024)]


def median_ms(fns: dict[str, Callable[[], object]], rounds: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median latency (ms) of each zero-argument callable; see the module doc for the protocol."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                f()
                samples[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(s) for name, s in samples.items()}


def make_input(batch: int, n: int, density: float, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(batch, n, generator=gen).abs()
    return x * (torch.rand(batch, n, generator=gen) < density)


def shared_weight(weight: torch.Tensor, bits: int) -> SharedWeightsKernel:
    """The kernel layout of ``weight`` shared by k-means into ``2**bits - 1`` levels (zeros stay pruned)."""
    w = SharedWeightsKernel.from_packed(SharedWeights.from_weight(weight, bits).pack(weight))
    if w is None:
        raise SystemExit(f"SharedWeightsKernel.from_packed cannot run a {bits}-bit shared weight")
    return w


def pq_weight(weight: torch.Tensor, subvector: int, codewords: int, iters: int) -> PQKernel:
    """The kernel layout of ``weight`` product-quantized with ``codewords`` per sub-space."""
    pq = ProductQuantized.from_weight(weight, subvector=subvector, codewords=codewords, iters=iters)
    w = PQKernel.from_packed(pq.pack(weight))
    if w is None:
        raise SystemExit(f"PQKernel.from_packed cannot run {codewords} codewords")
    return w


def sparse_rows(shapes, densities, batches, input_density, rounds, repeats, gen) -> list[dict]:
    rows = []
    for out_f, in_f in shapes:
        for density in densities:
            weight = torch.randn(out_f, in_f, generator=gen) * (torch.rand(out_f, in_f, generator=gen) < density)
            w = shared_weight(weight, bits=4)
            dense = torch.from_numpy(w.to_dense())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                csr = dense.to_sparse_csr()
            del weight
            for batch in batches:
                x = make_input(batch, in_f, input_density, gen)
                xt = x[0] if batch == 1 else x.T.contiguous()
                ms = median_ms(
                    {
                        "dense": lambda: F.linear(x, dense),
                        "csr": lambda: csr @ xt,
                        "torchshrink": lambda: shared_matmul(x, w),
                    },
                    rounds,
                    repeats,
                )
                rows.append(
                    {
                        "kind": "sparse",
                        "shape": [out_f, in_f],
                        "density": density,
                        "batch": batch,
                        "input_density": input_density,
                        "dense_ms": ms["dense"],
                        "csr_ms": ms["csr"],
                        "torchshrink_ms": ms["torchshrink"],
                        "torchshrink_bytes": w.nbytes_rows if batch > 1 else min(w.nbytes_rows, w.nbytes_cols),
                        "dense_bytes": dense.numel() * 4,
                    }
                )
    return rows


def pq_rows(shapes, subvectors, batches, input_density, rounds, repeats, gen) -> list[dict]:
    rows = []
    for out_f, in_f in shapes:
        weight = torch.randn(out_f, in_f, generator=gen)
        for d in subvectors:
            w = pq_weight(weight, subvector=d, codewords=256, iters=2)
            dense = torch.from_numpy(w.to_dense())
            for batch in batches:
                x = make_input(batch, in_f, input_density, gen)
                fns = {"dense": lambda: F.linear(x, dense), "torchshrink": lambda: pq_matmul(x, w)}
                ms = median_ms(fns, rounds, repeats)
                rows.append(
                    {
                        "kind": "pq",
                        "shape": [out_f, in_f],
                        "subvector": d,
                        "batch": batch,
                        "input_density": input_density,
                        "dense_ms": ms["dense"],
                        "torchshrink_ms": ms["torchshrink"],
                        "torchshrink_bytes": w.nbytes,
                        "dense_bytes": dense.numel() * 4,
                    }
                )
    return rows


def print_table(rows: list[dict]) -> None:
    cores = available_cores()
    print(f"torch threads {torch.get_num_threads()}, numba threads {min(numba.get_num_threads(), cores)}, cores {cores}")
    print("\nsparse shared weights (4-bit codebook)")
    head = ("shape", "dens", "batch", "dense ms", "csr ms", "ts ms", "dense/ts", "csr/ts")
    print("{:>11} {:>5} {:>5} {:>9} {:>8} {:>8} {:>8} {:>7}".format(*head))
    for r in rows:
        if r["kind"] == "sparse":
            t = r["torchshrink_ms"]
            shape = "x".join(map(str, r["shape"]))
            print(
                f"{shape:>11} {r['density']:>5.0%} {r['batch']:>5} {r['dense_ms']:>9.3f} {r['csr_ms']:>8.3f} "
                f"{t:>8.3f} {r['dense_ms'] / t:>7.1f}x {r['csr_ms'] / t:>6.1f}x"
            )
    print("\nproduct quantization (256 codewords)")
    print(f"{'shape':>11} {'d':>5} {'batch':>5} {'dense ms':>9} {'ts ms':>8} {'dense/ts':>8}")
    for r in rows:
        if r["kind"] == "pq":
            t = r["torchshrink_ms"]
            shape = "x".join(map(str, r["shape"]))
            ratio = r["dense_ms"] / t
            print(f"{shape:>11} {r['subvector']:>5} {r['batch']:>5} {r['dense_ms']:>9.3f} {t:>8.3f} {ratio:>7.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON list of rows instead of tables")
    parser.add_argument("--quick", action="store_true", help="one small shape, few repeats (smoke run)")
    parser.add_argument("--input-density", type=float, default=0.5, help="fraction of nonzero inputs (default 0.5)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if not 0.0 <= args.input_density <= 1.0:
        parser.error("--input-density must be in [0, 1]")
    shapes, rounds, repeats = (QUICK_SHAPES, 2, 3) if args.quick else (SHAPES, args.rounds, args.repeats)
    gen = torch.Generator().manual_seed(0)
    rows = sparse_rows(shapes, DENSITIES, BATCHES, args.input_density, rounds, repeats, gen)
    rows += pq_rows(shapes, SUBVECTORS, BATCHES, args.input_density, rounds, repeats, gen)
    if args.json:
        json.dump(rows, sys.stdout)
        print()
    else:
        print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
