"""``kind: xnor``: XNOR–popcount GEMM of ±1 matrices (Kim & Smaragdis 2016) vs dense torch.

``dense``/``bf16``/``int8`` compute ``x @ W.T`` for the same ±1 ``x`` and ``W`` in float32,
bfloat16 and ``torch._int_mm`` int8 (``_timing.baselines``). ``torchshrink`` is the bitwise
layer as it runs inside a network (:meth:`~torchshrink.runtime.xnor.XnorWeight.dot_packed`):
packed input bits in, int32 dot products out. ``float_io`` adds what a lone layer pays:
checking that the float input is ±1, packing it, and returning float32
(:func:`~torchshrink.runtime.xnor.xnor_matmul`).
"""

from __future__ import annotations

import torch
from _timing import baselines, median_ms, ms_fields, ratio

from torchshrink.runtime.xnor import XnorWeight, pack_signs, popcount_path, xnor_matmul

KIND = "xnor"
SHAPES = [(4096, 4096), (4096, 9216)]
BATCHES = [1, 64]


def _pm1(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.where(torch.rand(*shape, generator=gen) > 0.5, 1.0, -1.0)


def rows(args, gen: torch.Generator) -> list[dict]:
    out = []
    for out_f, in_f in args.shapes or SHAPES:
        weight = _pm1(gen, out_f, in_f)
        w = XnorWeight.from_dense(weight)
        for batch in BATCHES:
            x = _pm1(gen, batch, in_f)
            xp = pack_signs(x)
            fns = baselines(x, weight)
            fns["torchshrink"] = lambda: w.dot_packed(xp)
            fns["float_io"] = lambda: xnor_matmul(x, w)
            ms = median_ms(fns, args.rounds, args.repeats)
            out.append({"kind": KIND, "shape": [out_f, in_f], "batch": batch, **ms_fields(ms),
                        "float_io_ms": ms["float_io"], "popcount": popcount_path(),
                        "torchshrink_bytes": w.weight_bytes, "dense_bytes": weight.numel() * 4})
    return out


def print_rows(rows: list[dict]) -> None:
    print(f"\nXNOR-popcount GEMM, ±1 x ±1 (popcount path: {rows[0]['popcount'] if rows else '-'})")
    print(f"{'shape':>11} {'batch':>5} {'dense ms':>9} {'bf16 ms':>8} {'int8 ms':>8} {'ts ms':>8} {'ts io ms':>8}"
          f" {'dense/ts':>8} {'int8/ts':>8} {'dense/io':>8}")
    for r in rows:
        t = r["torchshrink_ms"]
        shape = "x".join(map(str, r["shape"]))
        bf, i8 = r["bf16_ms"], r["int8_ms"]
        print(f"{shape:>11} {r['batch']:>5} {r['dense_ms']:>9.3f} {'-' if bf is None else f'{bf:.3f}':>8} "
              f"{'-' if i8 is None else f'{i8:.3f}':>8} {t:>8.3f} {r['float_io_ms']:>8.3f} "
              f"{ratio(r['dense_ms'], t):>8} {ratio(i8, t):>8} {ratio(r['dense_ms'], r['float_io_ms']):>8}")
