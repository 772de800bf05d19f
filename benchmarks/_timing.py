"""Timing helpers shared by the benchmark scripts: one protocol, one set of baselines.

``median_ms`` warms every method up, then times them in interleaved rounds so that a noisy
period hits all methods alike. ``baselines`` gives the paths a user would try before
torchshrink for ``x @ W.T``: fp32 torch, torch's bf16 matmul and ``torch._int_mm``
(int8 x int8 -> int32, per-tensor symmetric quantization of both operands; the
quantization of the input is timed, the weight's is not), where this torch supports them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def median_ms(fns: dict[str, Callable[[], object]], rounds: int, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median latency (ms) of each zero-argument callable, timed in interleaved rounds."""
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
    """Post-ReLU-like input: ``|N(0, 1)|`` with a fraction ``density`` of entries nonzero."""
    x = torch.randn(batch, n, generator=gen).abs()
    return x * (torch.rand(batch, n, generator=gen) < density)


def _int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = t.abs().amax().clamp_min(1e-12) / 127.0
    return torch.round(t / scale).clamp_(-127, 127).to(torch.int8), scale


def baselines(x: torch.Tensor, weight: torch.Tensor) -> dict[str, Callable[[], object]]:
    """``dense`` (fp32), ``bf16`` and ``int8`` callables computing ``x @ weight.T`` (2-D ``x``).

    A path this torch cannot run on this CPU is left out (the row then has no figure for it).
    """
    fns: dict[str, Callable[[], object]] = {"dense": lambda: F.linear(x, weight)}
    xb, wb = x.to(torch.bfloat16), weight.to(torch.bfloat16)
    try:
        F.linear(xb, wb)
        fns["bf16"] = lambda: F.linear(x.to(torch.bfloat16), wb)
    except (RuntimeError, NotImplementedError):
        pass
    wq, ws = _int8(weight)
    wqt = wq.T.contiguous()
    if hasattr(torch, "_int_mm"):
        try:
            torch._int_mm(_int8(x)[0], wqt)

            def int8() -> torch.Tensor:
                xq, xs = _int8(x)
                return torch._int_mm(xq, wqt).to(torch.float32) * (xs * ws)

            fns["int8"] = int8
        except (RuntimeError, NotImplementedError):
            pass
    return fns


def ms_fields(ms: dict[str, float]) -> dict[str, float | None]:
    """The ``dense_ms``/``bf16_ms``/``int8_ms``/``torchshrink_ms`` fields of a row (None where not run)."""
    return {f"{k}_ms": ms.get(k) for k in ("dense", "bf16", "int8", "torchshrink")}


def ratio(num: float | None, den: float | None) -> str:
    """``num / den`` as ``"12.3x"``, or ``"-"`` where a figure is missing."""
    return "-" if num is None or not den else f"{num / den:.1f}x"
