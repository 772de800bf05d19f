"""``kind: tt``: Tensor-Train layers (Novikov et al. 2015) vs dense torch.

A 4096 x 4096 weight as a TT-matrix with modes ``8^4`` x ``8^4`` at ranks 4, 8 and 16
(random cores; the values do not change the speed), batch 1 and 64. ``dense`` is
``F.linear(x, W)`` with the rebuilt fp32 weight (plus the bf16 / int8 baselines of
``_timing.baselines``); ``contract`` is :class:`torchshrink.runtime.tt.TTKernel` alone
(the cores merged by :func:`torchshrink.factorize.tt.tt_plan`, ``groups``, then
contracted with the input); ``torchshrink`` is the layer as ``load`` builds it: a
``CompressedLinear`` holding the kernel and its decoded dense twin, which runs whichever
path the runtime's dispatch measured faster for the input's shape (``path``; decided
afresh here, not read from the dispatch cache, by the same timing protocol a loaded model
uses). ``flops_ratio`` is the dense multiply-adds over the contraction's.
``--quick``: rank 8 only (the issue's target row and its batch-1 twin).
"""

from __future__ import annotations

import contextlib
import os
import tempfile

import torch
from _timing import baselines, make_input, median_ms, ms_fields, ratio
from torch import nn

from torchshrink.runtime.dispatch import attach_twin
from torchshrink.runtime.modules import compressed_layer
from torchshrink.runtime.tt import TTKernel

KIND = "tt"
MODES = [8, 8, 8, 8]
RANKS = [4, 8, 16]
QUICK_RANKS = [8]
BATCHES = [1, 64]


def tt_kernel(modes: list[int], rank: int, gen: torch.Generator) -> TTKernel:
    d = len(modes)
    ranks = [1] + [rank] * (d - 1) + [1]
    cores = [torch.randn(ranks[k], modes[k], modes[k], ranks[k + 1], generator=gen) / (modes[k] * rank) ** 0.5
             for k in range(d)]
    return TTKernel([c.numpy() for c in cores])


def loaded_layer(kernel: TTKernel, weight: torch.Tensor) -> nn.Module:
    """The runtime layer ``load`` builds for a bias-free Linear stored in the ``tt`` form."""
    plain = nn.Linear(kernel.in_features, kernel.out_features, bias=False)
    with torch.no_grad():
        plain.weight.copy_(weight)
    return attach_twin(compressed_layer(plain, kernel), plain, "tt")


@contextlib.contextmanager
def fresh_decisions():
    """Dispatch decisions measured now: an empty, temporary dispatch cache for the block."""
    old = os.environ.get("XDG_CACHE_HOME")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("XDG_CACHE_HOME", None)
            else:
                os.environ["XDG_CACHE_HOME"] = old


def rows(args, gen: torch.Generator) -> list[dict]:
    out = []
    n = 1
    for m in MODES:
        n *= m
    for rank in QUICK_RANKS if args.quick else RANKS:
        kernel = tt_kernel(MODES, rank, gen)
        weight = torch.from_numpy(kernel.to_dense())
        layer = loaded_layer(kernel, weight)
        for batch in BATCHES:
            x = make_input(batch, n, args.input_density, gen)
            with torch.inference_mode(), fresh_decisions():
                path = layer.path_for(x)  # the first call at a shape measures both paths and keeps the faster
                fns = {**baselines(x, weight), "contract": lambda: kernel.matmul(x), "torchshrink": lambda: layer(x)}
                ms = median_ms(fns, args.rounds, args.repeats)
            out.append({"kind": KIND, "shape": [n, n], "modes": MODES, "rank": rank, "groups": kernel.groups,
                        "batch": batch, "input_density": args.input_density, **ms_fields(ms),
                        "contract_ms": ms["contract"], "path": "contract" if path == "kernel" else "dense",
                        "flops_ratio": batch * n * n / kernel.flops(batch),
                        "torchshrink_bytes": kernel.weight_bytes, "dense_bytes": n * n * 4})
    return out


def print_rows(rows: list[dict]) -> None:
    print("\ntensor train (modes 8^4 x 8^4; torchshrink = the loaded layer's measured choice of path)")
    print(f"{'shape':>11} {'rank':>4} {'groups':>9} {'batch':>5} {'dense ms':>9} {'bf16 ms':>8} {'contract':>9} "
          f"{'ts ms':>8} {'path':>8} {'flops':>6} {'dense/contract':>14} {'dense/ts':>8}")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        groups = ",".join(map(str, r["groups"]))
        bf16 = f"{r['bf16_ms']:>8.3f}" if r.get("bf16_ms") is not None else f"{'-':>8}"
        print(f"{shape:>11} {r['rank']:>4} {groups:>9} {r['batch']:>5} {r['dense_ms']:>9.3f} {bf16} "
              f"{r['contract_ms']:>9.3f} {r['torchshrink_ms']:>8.3f} {r['path']:>8} {r['flops_ratio']:>5.1f}x "
              f"{ratio(r['dense_ms'], r['contract_ms']):>14} {ratio(r['dense_ms'], r['torchshrink_ms']):>8}")
