"""``kind: binary``: 1-bit weights ±α (BWN, α per output channel) by table lookups vs dense, bf16 and int8 torch.

The weight is packed by :class:`torchshrink.quantize.BinaryWeights` (``bwn``) from a
Gaussian matrix; ``torchshrink`` is :func:`torchshrink.runtime.binary_matmul`.
``dense``/``bf16``/``int8`` are ``_timing.baselines`` on the decoded weight.
"""

from __future__ import annotations

import torch
from _timing import baselines, make_input, median_ms, ms_fields

from torchshrink.quantize import BinaryWeights
from torchshrink.runtime import BinaryKernel, binary_matmul

from .ternary import BATCHES, SHAPES
from .ternary import print_rows as _print

KIND = "binary"


def rows(args, gen: torch.Generator) -> list[dict]:
    out = []
    for out_f, in_f in args.shapes or SHAPES:
        weight = torch.randn(out_f, in_f, generator=gen)
        w = BinaryKernel.from_packed(BinaryWeights("bwn", 1.0).pack(weight))
        dense = torch.from_numpy(w.to_dense())
        for batch in BATCHES:
            x = make_input(batch, in_f, args.input_density, gen)
            fns = {**baselines(x, dense), "torchshrink": lambda: binary_matmul(x, w)}
            ms = median_ms(fns, args.rounds, args.repeats)
            out.append({"kind": KIND, "shape": [out_f, in_f], "batch": batch, "input_density": args.input_density,
                        **ms_fields(ms), "torchshrink_bytes": w.weight_bytes, "dense_bytes": dense.numel() * 4})
    return out


def print_rows(rows: list[dict]) -> None:
    _print(rows, "binary (BWN, 1 bit per weight + α per output channel)")
