"""``kind: sparse``: EIE-style sparse shared-weight layers (4-bit codebook) vs dense and CSR torch.

For each (out x in) shape, weight density and batch size: ``dense`` is
``torch.nn.functional.linear(x, W_hat)`` in float32, ``csr`` is ``torch.sparse_csr_tensor``
``@`` the input (``W @ x`` for batch 1, ``W @ x.T`` with ``x.T`` made contiguous before
timing for batches), ``torchshrink`` is :func:`torchshrink.runtime.shared_matmul` (k-means
weight sharing, :class:`torchshrink.quantize.SharedWeights`), where ``W_hat`` is the
decoded shared-weight matrix, so all compute the same function. ``fp32`` is the pruned-only
layer's CSR kernel (:func:`torchshrink.runtime.sparse_matmul`, what a file of the default
recipe runs) on the same sparsity pattern with fp32 values (``fp32/dense`` compares it with
``F.linear`` on that fp32 matrix, timed in the same rounds).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from _timing import make_input, median_ms, ratio

from torchshrink.quantize import SharedWeights
from torchshrink.runtime import SharedWeightsKernel, SparseKernel, shared_matmul, sparse_matmul

KIND = "sparse"
SHAPES = [(1000, 4096), (4096, 4096), (4096, 9216)]
DENSITIES = [0.05, 0.10, 0.30]
BATCHES = [1, 64]


def shared_weight(weight: torch.Tensor, bits: int) -> SharedWeightsKernel:
    """The kernel layout of ``weight`` shared by k-means into ``2**bits - 1`` levels (zeros stay pruned)."""
    w = SharedWeightsKernel.from_packed(SharedWeights.from_weight(weight, bits).pack(weight))
    if w is None:
        raise SystemExit(f"SharedWeightsKernel.from_packed cannot run a {bits}-bit shared weight")
    return w


def rows(args, gen: torch.Generator) -> list[dict]:
    out = []
    for out_f, in_f in args.shapes or SHAPES:
        for density in DENSITIES:
            weight = torch.randn(out_f, in_f, generator=gen) * (torch.rand(out_f, in_f, generator=gen) < density)
            w = shared_weight(weight, bits=4)
            fp32 = SparseKernel.from_dense(weight.numpy())
            dense = torch.from_numpy(w.to_dense())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                csr = dense.to_sparse_csr()
            for batch in BATCHES:
                x = make_input(batch, in_f, args.input_density, gen)
                xt = x[0] if batch == 1 else x.T.contiguous()
                ms = median_ms(
                    {
                        "dense": lambda: F.linear(x, dense),
                        "csr": lambda: csr @ xt,
                        "torchshrink": lambda: shared_matmul(x, w),
                        "fp32_dense": lambda: F.linear(x, weight),
                        "fp32": lambda: sparse_matmul(x, fp32),
                    },
                    args.rounds,
                    args.repeats,
                )
                out.append(
                    {
                        "kind": KIND,
                        "shape": [out_f, in_f],
                        "density": density,
                        "batch": batch,
                        "input_density": args.input_density,
                        "dense_ms": ms["dense"],
                        "csr_ms": ms["csr"],
                        "torchshrink_ms": ms["torchshrink"],
                        "fp32_dense_ms": ms["fp32_dense"],
                        "fp32_ms": ms["fp32"],
                        "torchshrink_bytes": w.nbytes_rows if batch > 1 else min(w.nbytes_rows, w.nbytes_cols),
                        "dense_bytes": dense.numel() * 4,
                    }
                )
    return out


def print_rows(rows: list[dict]) -> None:
    print("\nsparse shared weights (4-bit codebook)")
    head = ("shape", "dens", "batch", "dense ms", "csr ms", "ts ms", "dense/ts", "csr/ts", "fp32 ms", "dense/fp32")
    print("{:>11} {:>5} {:>5} {:>9} {:>8} {:>8} {:>8} {:>7} {:>8} {:>10}".format(*head))
    for r in rows:
        t = r["torchshrink_ms"]
        shape = "x".join(map(str, r["shape"]))
        print(
            f"{shape:>11} {r['density']:>5.0%} {r['batch']:>5} {r['dense_ms']:>9.3f} {r['csr_ms']:>8.3f} "
            f"{t:>8.3f} {ratio(r['dense_ms'], t):>8} {ratio(r['csr_ms'], t):>7} {r['fp32_ms']:>8.3f} "
            f"{ratio(r['fp32_dense_ms'], r['fp32_ms']):>10}"
        )
