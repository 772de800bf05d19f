"""``kind: ternary``: TTQ weights {+Wp, 0, -Wn} run by table lookups vs dense, bf16 and int8 torch.

The weight is packed by :class:`torchshrink.quantize.TrainedTernary` from a Gaussian
matrix (t = 0.05 leaves ~20 % zeros; the kernel's speed does not depend on the values);
``torchshrink`` is :func:`torchshrink.runtime.ternary_matmul` on the kernel layout that
``from_packed`` builds (batch 1: the VPERMPS bit-plane kernel on AVX-512 CPUs, the
gather kernel elsewhere). ``dense``/``bf16``/``int8`` are ``_timing.baselines`` on the decoded
weight (``torch._int_mm`` where this torch has it; the input's quantization is timed).
"""

from __future__ import annotations

import torch
from _timing import baselines, make_input, median_ms, ms_fields, ratio

from torchshrink.quantize import TrainedTernary
from torchshrink.runtime import TernaryKernel, ternary_matmul

KIND = "ternary"
SHAPES = [(4096, 4096), (4096, 9216), (1000, 4096)]
BATCHES = [1, 64]


def kernel_weight(weight: torch.Tensor) -> TernaryKernel:
    latent = weight / weight.abs().max()
    return TernaryKernel.from_packed(TrainedTernary(0.03, 0.03).pack(latent))


def rows(args, gen: torch.Generator) -> list[dict]:
    out = []
    for out_f, in_f in args.shapes or SHAPES:
        w = kernel_weight(torch.randn(out_f, in_f, generator=gen))
        dense = torch.from_numpy(w.to_dense())
        for batch in BATCHES:
            x = make_input(batch, in_f, args.input_density, gen)
            fns = {**baselines(x, dense), "torchshrink": lambda: ternary_matmul(x, w)}
            ms = median_ms(fns, args.rounds, args.repeats)
            out.append({"kind": KIND, "shape": [out_f, in_f], "batch": batch, "input_density": args.input_density,
                        **ms_fields(ms), "torchshrink_bytes": w.weight_bytes, "dense_bytes": dense.numel() * 4})
    return out


def print_rows(rows: list[dict], title: str = "ternary (TTQ, 5 codes per byte in memory)") -> None:
    print(f"\n{title}")
    print(f"{'shape':>11} {'batch':>5} {'dense ms':>9} {'bf16 ms':>8} {'int8 ms':>8} {'ts ms':>8} "
          f"{'dense/ts':>8} {'bf16/ts':>8} {'int8/ts':>8}")
    for r in rows:
        t = r["torchshrink_ms"]
        shape = "x".join(map(str, r["shape"]))
        cells = [f"{v:>8.3f}" if v is not None else f"{'-':>8}" for v in (r["bf16_ms"], r["int8_ms"])]
        print(f"{shape:>11} {r['batch']:>5} {r['dense_ms']:>9.3f} {cells[0]} {cells[1]} {t:>8.3f} "
              f"{ratio(r['dense_ms'], t):>8} {ratio(r['bf16_ms'], t):>8} {ratio(r['int8_ms'], t):>8}")
