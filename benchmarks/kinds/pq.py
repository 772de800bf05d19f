"""``kind: pq``: product quantization (Q-CNN lookup tables) vs dense torch.

``dense`` is ``torch.nn.functional.linear(x, W_hat)`` in float32 and ``torchshrink`` is
:func:`torchshrink.runtime.pq_matmul`, at sub-vector lengths 4 and 8 with 256 codewords
(:class:`torchshrink.quantize.ProductQuantized`, k-means with 2 Lloyd iterations; the
values do not change the kernel's speed).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _timing import make_input, median_ms, ratio

from torchshrink.quantize import ProductQuantized
from torchshrink.runtime import PQKernel, pq_matmul

KIND = "pq"
SHAPES = [(1000, 4096), (4096, 4096), (4096, 9216)]
SUBVECTORS = [4, 8]
BATCHES = [1, 64]


def pq_weight(weight: torch.Tensor, subvector: int, codewords: int, iters: int) -> PQKernel:
    """The kernel layout of ``weight`` product-quantized with ``codewords`` per sub-space."""
    pq = ProductQuantized.from_weight(weight, subvector=subvector, codewords=codewords, iters=iters)
    w = PQKernel.from_packed(pq.pack(weight))
    if w is None:
        raise SystemExit(f"PQKernel.from_packed cannot run {codewords} codewords")
    return w


def rows(args, gen: torch.Generator) -> list[dict]:
    out = []
    for out_f, in_f in args.shapes or SHAPES:
        weight = torch.randn(out_f, in_f, generator=gen)
        for d in SUBVECTORS:
            w = pq_weight(weight, subvector=d, codewords=256, iters=2)
            dense = torch.from_numpy(w.to_dense())
            for batch in BATCHES:
                x = make_input(batch, in_f, args.input_density, gen)
                fns = {"dense": lambda: F.linear(x, dense), "torchshrink": lambda: pq_matmul(x, w)}
                ms = median_ms(fns, args.rounds, args.repeats)
                out.append(
                    {
                        "kind": KIND,
                        "shape": [out_f, in_f],
                        "subvector": d,
                        "batch": batch,
                        "input_density": args.input_density,
                        "dense_ms": ms["dense"],
                        "torchshrink_ms": ms["torchshrink"],
                        "torchshrink_bytes": w.nbytes,
                        "dense_bytes": dense.numel() * 4,
                    }
                )
    return out


def print_rows(rows: list[dict]) -> None:
    print("\nproduct quantization (256 codewords)")
    print(f"{'shape':>11} {'d':>5} {'batch':>5} {'dense ms':>9} {'ts ms':>8} {'dense/ts':>8}")
    for r in rows:
        t = r["torchshrink_ms"]
        shape = "x".join(map(str, r["shape"]))
        print(f"{shape:>11} {r['subvector']:>5} {r['batch']:>5} {r['dense_ms']:>9.3f} {t:>8.3f} {ratio(r['dense_ms'], t):>8}")
