"""``kind: xnor_conv``: binary 3x3 convolution (XNOR-Net style, ±1 padding) vs ``F.conv2d`` fp32.

256 -> 256 channels, 32x32, stride 1, padding 1, batch 1 and 16. ``dense`` is
``torch.nn.functional.conv2d`` in float32 on the same ±1 input and filters (zero padding:
the timing is the same). ``torchshrink`` is
:func:`~torchshrink.runtime.xnor.xnor_conv2d_packed`, the layer as a bitwise network runs
it: a +1-padded NHWC input packed along channels in, int32 NHWC out. ``float_io`` is
:func:`~torchshrink.runtime.xnor.xnor_conv2d`: float NCHW in (packed here) and out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from _timing import median_ms, ratio

from torchshrink.runtime.xnor import XnorConvWeight, pack_nhwc, xnor_conv2d, xnor_conv2d_packed

KIND = "xnor_conv"
CASES = [(256, 256, 32)]
QUICK_CASES = [(64, 64, 16)]
BATCHES = [1, 16]


def _pm1(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.where(torch.rand(*shape, generator=gen) > 0.5, 1.0, -1.0)


def rows(args, gen: torch.Generator) -> list[dict]:
    out = []
    for c_in, c_out, size in QUICK_CASES if args.quick else CASES:
        weight = _pm1(gen, c_out, c_in, 3, 3)
        w = XnorConvWeight.from_dense(weight)
        for batch in BATCHES:
            x = _pm1(gen, batch, c_in, size, size)
            xp = pack_nhwc(x, 1)
            fns = {"dense": lambda: F.conv2d(x, weight, padding=1),
                   "torchshrink": lambda: xnor_conv2d_packed(xp, w),
                   "float_io": lambda: xnor_conv2d(x, w, 1, 1)}
            ms = median_ms(fns, args.rounds, args.repeats)
            out.append({"kind": KIND, "channels": [c_in, c_out], "size": size, "kernel": 3, "batch": batch,
                        "dense_ms": ms["dense"], "torchshrink_ms": ms["torchshrink"], "float_io_ms": ms["float_io"],
                        "torchshrink_bytes": w.weight_bytes, "dense_bytes": weight.numel() * 4})
    return out


def print_rows(rows: list[dict]) -> None:
    print("\nbinary 3x3 convolution (±1 padding) vs F.conv2d fp32")
    print(f"{'channels':>9} {'size':>5} {'batch':>5} {'dense ms':>9} {'ts ms':>8} {'ts io ms':>8} {'dense/ts':>8}"
          f" {'dense/io':>8}")
    for r in rows:
        ch = "->".join(map(str, r["channels"]))
        print(f"{ch:>9} {r['size']:>5} {r['batch']:>5} {r['dense_ms']:>9.3f} {r['torchshrink_ms']:>8.3f} "
              f"{r['float_io_ms']:>8.3f} {ratio(r['dense_ms'], r['torchshrink_ms']):>8} "
              f"{ratio(r['dense_ms'], r['float_io_ms']):>8}")
