"""``kind: bitwise_mlp``: a whole bitwise MLP (784-4096-4096-4096-10) end to end vs the same network in fp32 torch.

The network is built as the ``kim2016_bitwise`` recipe leaves it (random weights: the
values do not change the speed): a 1-bit input binarizer, ±1 weights
(:class:`~torchshrink.quantize.bitwise.BinarySign`), batch norm + sign folded into integer
thresholds; saved to a ``.tsk`` file and loaded back. ``dense`` is that file decoded
(``load(dense=True)``: fp32 ``nn.Linear`` layers and the thresholds in torch), ``twin`` the
real-valued twin (fp32 Linear + BatchNorm1d + tanh), and ``torchshrink`` the runtime model
(``load``: one :class:`~torchshrink.runtime.xnor.BitwiseMLP`, activations packed from layer
to layer, timed without the :class:`~torchshrink.runtime.dispatch.RuntimeModel` wrapper). ``agree`` is the fraction of equal predictions of ``torchshrink`` and ``dense``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _timing import median_ms, ratio

from torchshrink.format import load, save
from torchshrink.models import build_model
from torchshrink.quantize.bitwise import binarize, binarize_input, fold_plan, sign_activation_plan
from torchshrink.runtime.dispatch import unwrap_runtime
from torchshrink.runtime.xnor import BitwiseMLP
from torchshrink.surgery import apply_plan

KIND = "bitwise_mlp"
HIDDEN = [4096, 4096, 4096]
QUICK_HIDDEN = [512, 512, 512]
BATCHES = [1, 64]


@torch.no_grad()
def bitwise_network(hidden: list[int], gen: torch.Generator) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(real-valued twin, folded bitwise model) on 28x28 inputs in [0, 1]."""
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    twin = build_model("mlp", (1, 28, 28), 10, hidden=hidden).eval()
    model = binarize_input(twin, 0.0, 1.0, bits=1)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            binarize(m)
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 8)
            m.running_var.uniform_(10, 100)
    model = apply_plan(model, sign_activation_plan(model))
    model.eval()
    return twin, apply_plan(model, fold_plan(model)).eval()


def rows(args, gen: torch.Generator) -> list[dict]:
    hidden = QUICK_HIDDEN if args.quick else HIDDEN
    twin, model = bitwise_network(hidden, gen)
    with tempfile.TemporaryDirectory() as tmp:
        info = save(model, Path(tmp) / "bitwise.tsk")
        fast, dense = unwrap_runtime(load(Path(tmp) / "bitwise.tsk")), load(Path(tmp) / "bitwise.tsk", dense=True)
    if not isinstance(fast, BitwiseMLP):
        raise SystemExit("the loaded bitwise MLP did not fuse into a BitwiseMLP")
    out = []
    for batch in BATCHES:
        x = torch.rand(batch, 1, 28, 28, generator=gen)
        with torch.no_grad():
            agree = float((fast(x).argmax(1) == dense(x).argmax(1)).float().mean())
            fns = {"dense": lambda: dense(x), "twin": lambda: twin(x), "torchshrink": lambda: fast(x)}
            ms = median_ms(fns, args.rounds, args.repeats)
        out.append({"kind": KIND, "layers": [784, *hidden, 10], "batch": batch, "dense_ms": ms["dense"],
                    "twin_ms": ms["twin"], "torchshrink_ms": ms["torchshrink"], "agree": agree,
                    "file_bytes": info.file_bytes, "torchshrink_bytes": fast.weight_bytes,
                    "dense_bytes": sum(p.numel() * 4 for p in twin.parameters())})
    return out


def print_rows(rows: list[dict]) -> None:
    print("\nbitwise MLP end to end vs the same network in fp32 torch (decoded) and its real-valued twin")
    print(f"{'layers':>24} {'batch':>5} {'dense ms':>9} {'twin ms':>8} {'ts ms':>8} {'dense/ts':>8} {'twin/ts':>8}"
          f" {'agree':>6}")
    for r in rows:
        layers = "-".join(map(str, r["layers"]))
        print(f"{layers:>24} {r['batch']:>5} {r['dense_ms']:>9.3f} {r['twin_ms']:>8.3f} {r['torchshrink_ms']:>8.3f} "
              f"{ratio(r['dense_ms'], r['torchshrink_ms']):>8} {ratio(r['twin_ms'], r['torchshrink_ms']):>8} "
              f"{r['agree']:>6.2f}")
