"""``kind: tt``: Tensor-Train layers (Novikov et al. 2015) vs dense torch.

A 4096 x 4096 weight as a TT-matrix with modes ``8^4`` x ``8^4`` at ranks 4, 8 and 16
(random cores; the values do not change the speed). ``dense`` is
``F.linear(x, W)`` with the rebuilt fp32 weight (plus the bf16 / int8 baselines of
``_timing.baselines``); ``contract`` forces the core contraction
(:func:`torchshrink.factorize.tt.tt_contract`); ``torchshrink`` is
:class:`torchshrink.runtime.tt.TTKernel` as loading builds it, which picks, per batch
size, whichever of contraction and the rebuilt dense weight it measured faster
(``path``). Batch 1 and 64.
"""

from __future__ import annotations

import torch
from _timing import baselines, make_input, median_ms, ms_fields, ratio

from torchshrink.runtime.tt import TTKernel

KIND = "tt"
MODES = [8, 8, 8, 8]
RANKS = [4, 8, 16]
BATCHES = [1, 64]


def tt_kernel(modes: list[int], rank: int, gen: torch.Generator, path: str | None = None) -> TTKernel:
    d = len(modes)
    ranks = [1] + [rank] * (d - 1) + [1]
    cores = [torch.randn(ranks[k], modes[k], modes[k], ranks[k + 1], generator=gen) / (modes[k] * rank) ** 0.5
             for k in range(d)]
    return TTKernel([c.numpy() for c in cores], path=path)


def rows(args, gen: torch.Generator) -> list[dict]:
    out = []
    modes = [4, 4, 4] if args.quick else MODES
    n = 1
    for m in modes:
        n *= m
    for rank in RANKS[:1] if args.quick else RANKS:
        auto = tt_kernel(modes, rank, gen)
        contract = TTKernel(auto.cores, path="contract")
        weight = auto.dense()
        for batch in BATCHES:
            x = make_input(batch, n, args.input_density, gen)
            fns = {**baselines(x, weight), "contract": lambda: contract.matmul(x), "torchshrink": lambda: auto.matmul(x)}
            auto.matmul(x)  # the first call at a batch size measures both paths and keeps the faster
            ms = median_ms(fns, args.rounds, args.repeats)
            out.append({"kind": KIND, "shape": [n, n], "modes": modes, "rank": rank, "batch": batch,
                        "input_density": args.input_density, **ms_fields(ms), "contract_ms": ms["contract"],
                        "path": auto.choose(x), "torchshrink_bytes": auto.weight_bytes, "dense_bytes": n * n * 4})
    return out


def print_rows(rows: list[dict]) -> None:
    print("\ntensor train (modes 8^4 x 8^4; torchshrink = the per-layer choice of path)")
    print(f"{'shape':>11} {'rank':>4} {'batch':>5} {'dense ms':>9} {'contract':>9} {'ts ms':>8} {'path':>8} "
          f"{'dense/contract':>14} {'dense/ts':>8}")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        print(f"{shape:>11} {r['rank']:>4} {r['batch']:>5} {r['dense_ms']:>9.3f} {r['contract_ms']:>9.3f} "
              f"{r['torchshrink_ms']:>8.3f} {r['path']:>8} {ratio(r['dense_ms'], r['contract_ms']):>14} "
              f"{ratio(r['dense_ms'], r['torchshrink_ms']):>8}")
