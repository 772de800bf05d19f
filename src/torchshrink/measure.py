"""Measuring a model honestly: parameters, nonzeros, MACs, bytes, latency, accuracy.

Every figure is taken from the *effective* model, the one training, evaluation and export
see: a pruned layer's ``weight`` is the masked weight (see :mod:`torchshrink.core.transform`).

MACs (multiply-accumulates) are counted per sample, as in Han et al. 2015 ("Learning both
Weights and Connections", Table 1) and Li et al. 2017 (FLOPs, Table 2): a weight is used
once per output position, so a layer costs ``weight.numel() x positions`` MACs, where
positions is 1 for a Linear layer on a vector and ``H_out x W_out`` for a Conv2d. A
grouped convolution's weight is already ``(C_out, C_in / groups, kH, kW)``, so groups are
accounted for. The *effective* count uses only the nonzero weights (what a sparse kernel
has to do). Bias additions and padded positions follow the usual convention: biases are
not counted, padded inputs are.
"""

from __future__ import annotations

import contextlib
import numbers
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from .errors import ModelError
from .core.params import Interval, check
from .core.select import tensor_key, unwrap, weight_layers
from .core.transform import effective_state_dict

_KINDS: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.Linear, "linear"),
    (nn.Conv1d, "conv1d"),
    (nn.Conv2d, "conv2d"),
    (nn.Conv3d, "conv3d"),
)


@dataclass
class LayerStats:
    """Size and cost of one weight layer (Linear / Conv), measured on effective tensors.

    ``params`` and ``nonzeros`` count weight and bias entries; ``sparsity`` is that of the
    weight alone. ``bits_per_weight`` is the storage cost per weight: 32 for dense fp32
    until a file format reports the real figure.
    """

    name: str
    kind: str
    shape: list[int]
    params: int
    nonzeros: int
    sparsity: float
    macs_dense: int
    macs_effective: int
    fp32_bytes: int
    weight_key: str = "weight"
    bits_per_weight: float = 32.0

    def to_dict(self) -> dict:
        """A plain JSON-able dict of the fields."""
        return asdict(self)


def layer_stats(model: nn.Module, input_shape: Sequence[int]) -> list[LayerStats]:
    """Per-layer statistics of every Linear / Conv layer, in definition order.

    ``input_shape`` is the shape of ONE sample, without the batch dimension (``(1, 28,
    28)``). One forward pass on a zeros batch of size 1, with forward hooks, learns each
    layer's output size; it runs in eval mode under ``torch.no_grad()`` and leaves the
    model's modes and weights as they were. A layer the forward pass never reaches gets
    zero MACs; a layer called several times is counted once per call.
    """
    _check_model(model)
    shape = _check_shape(input_shape)
    layers = weight_layers(model)
    positions = _output_positions(model, shape, layers)
    sd = effective_state_dict(model)
    out: list[LayerStats] = []
    for name, layer in layers:
        weight, bias = _weight_and_bias(sd, name)
        w_nz = int(torch.count_nonzero(weight))
        b_numel = 0 if bias is None else bias.numel()
        b_nz = 0 if bias is None else int(torch.count_nonzero(bias))
        pos = positions.get(name, 0)
        params = weight.numel() + b_numel
        out.append(
            LayerStats(
                name=name,
                kind=_kind(layer),
                shape=list(weight.shape),
                params=params,
                nonzeros=w_nz + b_nz,
                sparsity=1.0 - w_nz / weight.numel() if weight.numel() else 0.0,
                macs_dense=weight.numel() * pos,
                macs_effective=w_nz * pos,
                fp32_bytes=4 * params,
                weight_key=tensor_key(name, "weight"),
            )
        )
    return out


def model_summary(model: nn.Module, input_shape: Sequence[int]) -> dict:
    """Whole-model totals.

    ``params`` / ``nonzero_params``: every parameter tensor of the effective state dict
    (weights, biases, batch-norm affine terms; buffers such as running statistics are not
    parameters). ``weight_params`` / ``weight_nonzeros``: the weight tensors of the
    Linear / Conv layers only (no biases), the figure pruning papers report.
    ``macs_dense`` / ``macs_effective``: per-sample sums over those layers.
    ``dense_bytes``: raw tensor bytes of the effective state dict stored as fp32 (every
    entry, buffers included); :func:`state_dict_bytes` is the same plus the file header.
    """
    stats = layer_stats(model, input_shape)
    sd = effective_state_dict(model)
    buffers = {n for n, _ in unwrap(model).named_buffers()}
    params = nonzero = dense_bytes = 0
    for key, t in sd.items():
        dense_bytes += t.numel() * (4 if t.is_floating_point() else t.element_size())
        if key not in buffers:
            params += t.numel()
            nonzero += int(torch.count_nonzero(t))
    weights = [_weight_and_bias(sd, name)[0] for name, _ in weight_layers(model)]
    return {
        "params": params,
        "nonzero_params": nonzero,
        "weight_params": sum(w.numel() for w in weights),
        "weight_nonzeros": sum(int(torch.count_nonzero(w)) for w in weights),
        "macs_dense": sum(s.macs_dense for s in stats),
        "macs_effective": sum(s.macs_effective for s in stats),
        "dense_bytes": dense_bytes,
    }


def state_dict_bytes(model: nn.Module) -> int:
    """MEASURED size in bytes of the model's plain fp32 state dict as a safetensors file.

    The effective state dict (floating tensors as float32) is serialized with
    ``safetensors.torch.save``; this is the honest baseline for compression ratios.
    Tied tensors are stored once per key, as in a plain state dict saved entry by entry.
    """
    from safetensors.torch import save

    _check_model(model)
    tensors = {
        k: (v.float() if v.is_floating_point() else v).detach().cpu().contiguous().clone()
        for k, v in effective_state_dict(model).items()
    }
    return len(save(tensors))


def latency_ms(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    *,
    repeats: int = 50,
    warmup: int = 5,
    max_seconds: float = 5.0,
) -> dict:
    """Wall-clock forward latency of one batch: ``{"median_ms", "p90_ms", "runs"}``.

    Runs in eval mode (restored afterwards) under ``torch.inference_mode()``, timed with
    ``time.perf_counter``, on a fixed pseudo-random normal input (not zeros, so kernels
    that skip zero activations are not flattered). Warm-up and timed runs each stop early
    once ``max_seconds`` have passed, keeping at least 3 timed runs (or ``repeats`` if
    fewer).
    """
    _check_model(model)
    shape = _check_shape(input_shape)
    _check_int("batch_size", batch_size, 1)
    _check_int("repeats", repeats, 1)
    _check_int("warmup", warmup, 0)
    check(max_seconds, "max_seconds", None, Interval(float, 0.0, None, "neither"))
    device, dtype = _device_dtype(model)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *shape), generator=gen).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times: list[float] = []
    with _eval_mode(model), torch.inference_mode():
        start = time.perf_counter()
        for _ in range(warmup):
            _forward(model, x, shape)
            if time.perf_counter() - start > max_seconds:
                break
        sync()
        start = time.perf_counter()
        while len(times) < repeats:
            t0 = time.perf_counter()
            _forward(model, x, shape)
            sync()
            t1 = time.perf_counter()
            times.append((t1 - t0) * 1e3)
            if t1 - start > max_seconds and len(times) >= min(3, repeats):
                break
    return {
        "median_ms": statistics.median(times),
        "p90_ms": float(np.percentile(times, 90)),
        "runs": len(times),
    }


def latency_table(
    model: nn.Module,
    input_shape: Sequence[int],
    batches: Sequence[int] = (1, 64),
    *,
    repeats: int = 50,
    warmup: int = 5,
    max_seconds: float = 5.0,
) -> dict[str, dict]:
    """:func:`latency_ms` for each batch size, keyed ``"batch_1"``, ``"batch_64"``, ..."""
    return {
        f"batch_{b}": latency_ms(
            model, input_shape, b, repeats=repeats, warmup=warmup, max_seconds=max_seconds
        )
        for b in batches
    }


#: Relative change of every median between two checks under which a comparison is stable.
STABLE_TOLERANCE = 0.03
#: Spread ``(p90 - p10) / median`` above which a machine counts as noisy.
NOISY_SPREAD = 0.5


def compare_latency(
    models: Mapping[str, nn.Module],
    input_shape: Sequence[int],
    batch_size: int,
    *,
    min_rounds: int = 6,
    min_runs: int = 1,
    max_seconds: float = 10.0,
    round_ms: float = 20.0,
) -> dict:
    """Latency of several models on one input, measured together until every median is stable.

    The models run in interleaved rounds (the order rotates each round), each round
    timing every model for about ``round_ms``, so that a noisy period hits all of them
    alike and their *ratios* hold even on a loaded machine. After ``min_rounds`` rounds
    the protocol stops once every model's median (over all its samples) moved less than
    :data:`STABLE_TOLERANCE` since the previous round, twice in a row; otherwise it stops
    at ``max_seconds`` and says so (``stable: False``); every model gets at least
    ``min_runs`` samples. Same input as :func:`latency_ms`.

    Returns ``{"models": {name: {"median_ms", "min_ms", "p10_ms", "p90_ms", "spread",
    "runs"}}, "rounds", "stable", "noisy", "seconds"}``; ``spread`` is ``(p90 - p10) /
    median`` and ``noisy`` is True when the run was not stable or a spread exceeds
    :data:`NOISY_SPREAD`.
    """
    if not models:
        raise ModelError("compare_latency needs at least one model.")
    for m in models.values():
        _check_model(m)
    shape = _check_shape(input_shape)
    _check_int("batch_size", batch_size, 1)
    _check_int("min_rounds", min_rounds, 1)
    check(max_seconds, "max_seconds", None, Interval(float, 0.0, None, "neither"))
    device, dtype = _device_dtype(next(iter(models.values())))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *shape), generator=gen).to(device=device, dtype=dtype)
    names = list(models)
    samples: dict[str, list[float]] = {n: [] for n in names}
    per_round: dict[str, int] = {}
    start = time.perf_counter()
    rounds = calm = 0
    stable = False
    with contextlib.ExitStack() as stack, torch.inference_mode():
        for m in models.values():
            stack.enter_context(_eval_mode(m))
        for n in names:  # warm-up; it also sizes a round
            t0 = time.perf_counter()
            for _ in range(3):
                _forward(models[n], x, shape)
            each = (time.perf_counter() - t0) / 3 * 1e3
            per_round[n] = max(1, min(1000, int(round_ms / max(each, 1e-4))))
        last: dict[str, float] | None = None
        while True:
            order = names[rounds % len(names):] + names[: rounds % len(names)]
            for n in order:
                f, out = models[n], samples[n]
                for _ in range(per_round[n]):
                    t0 = time.perf_counter()
                    _forward(f, x, shape)
                    out.append((time.perf_counter() - t0) * 1e3)
            rounds += 1
            now = {n: statistics.median(samples[n]) for n in names}
            if last is not None and rounds >= min_rounds:
                moved = max(abs(now[n] - last[n]) / now[n] for n in names)
                calm = calm + 1 if moved < STABLE_TOLERANCE else 0
                if calm >= 2 and all(len(samples[n]) >= min_runs for n in names):
                    stable = True
                    break
            last = now
            if time.perf_counter() - start > max_seconds and rounds >= min(3, min_rounds):
                break
    stats = {n: _stats(samples[n]) for n in names}
    noisy = not stable or any(s["spread"] > NOISY_SPREAD for s in stats.values())
    return {"models": stats, "rounds": rounds, "stable": stable, "noisy": noisy,
            "seconds": time.perf_counter() - start}


def _stats(times: Sequence[float]) -> dict:
    med = statistics.median(times)
    p10, p90 = (float(v) for v in np.percentile(times, [10, 90]))
    return {"median_ms": med, "min_ms": min(times), "p10_ms": p10, "p90_ms": p90,
            "spread": (p90 - p10) / med if med > 0 else 0.0, "runs": len(times)}


def weight_bytes_touched(model: nn.Module, batch: int = 1) -> int:
    """Bytes of weight data one forward pass at ``batch`` reads, in the layout that runs.

    The one definition shared by ``torchshrink bench`` and the energy estimate. A runtime
    layer on its kernel path counts its kernel layout (``weight_bytes``) plus its bias;
    a layer running dense (a plain layer, or a runtime layer whose measured dispatch
    chose its decoded twin at this batch size) counts its parameters at their element
    size. Buffers (batch-norm statistics) are not weights and are not counted.
    """
    from .runtime.dispatch import Dispatched, Dispatching, RuntimeModel

    if isinstance(model, Dispatching) and model.dense_twin is not None and _path_at(model, batch) == "dense":
        return weight_bytes_touched(model.dense_twin, batch)
    if isinstance(model, (RuntimeModel, Dispatched)):  # wrappers: what the wrapped module reads
        return weight_bytes_touched(model.inner, batch)
    if hasattr(model, "weight_bytes"):
        bias = getattr(model, "bias", None)
        extra = bias.numel() * bias.element_size() if isinstance(bias, torch.Tensor) else 0
        return int(model.weight_bytes) + extra
    own = sum(p.numel() * p.element_size() for p in model.parameters(recurse=False))
    return own + sum(weight_bytes_touched(c, batch) for c in model.children())


def _path_at(module: nn.Module, batch: int) -> str:
    if getattr(module, "forced", None):
        return module.forced
    for shape, d in module.decisions.items():
        if shape and shape[0] == batch:
            return d["path"]
    return "kernel"


# --- helpers -------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _output_positions(
    model: nn.Module, shape: tuple[int, ...], layers: list[tuple[str, nn.Module]]
) -> dict[str, int]:
    """Output positions per sample of each layer, from one forward pass on zeros."""
    positions: dict[str, int] = {}

    def hook(name: str):
        def record(layer: nn.Module, _inp, out: torch.Tensor) -> None:
            channels = getattr(layer, "out_features", None) or layer.out_channels
            positions[name] = positions.get(name, 0) + out.numel() // channels

        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers]
    device, dtype = _device_dtype(model)
    try:
        with _eval_mode(model), torch.no_grad():
            _forward(model, torch.zeros((1, *shape), device=device, dtype=dtype), shape)
    finally:
        for h in handles:
            h.remove()
    return positions


def _forward(model: nn.Module, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        return model(x)
    except Exception as e:  # noqa: BLE001 - any failure means the shape does not fit
        msg = " ".join(str(e).split())
        raise ModelError(f"model does not accept input of shape {tuple(shape)}: {msg}") from e


def _weight_and_bias(
    sd: dict[str, torch.Tensor], name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    return sd[tensor_key(name, "weight")], sd.get(tensor_key(name, "bias"))


def _kind(layer: nn.Module) -> str:
    for cls, kind in _KINDS:
        if isinstance(layer, cls):
            return kind
    return type(layer).__name__.lower()


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for t in model.parameters():
        if t.is_floating_point():
            return t.device, t.dtype
    return torch.device("cpu"), torch.float32


def _check_model(model: object) -> None:
    if not isinstance(model, nn.Module):
        raise ModelError(f"The 'model' parameter must be a torch.nn.Module. Got {type(model).__name__}.")


def _check_shape(input_shape: object) -> tuple[int, ...]:
    ok = (
        isinstance(input_shape, (tuple, list, torch.Size))
        and len(input_shape) > 0
        and all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in input_shape)
    )
    if not ok:
        raise ModelError(
            "The 'input_shape' parameter must be a non-empty tuple of positive ints, the shape of "
            f"one sample without the batch dimension, e.g. (1, 28, 28). Got {input_shape!r}."
        )
    return tuple(int(d) for d in input_shape)


def _check_int(name: str, value: object, minimum: int) -> None:
    check(value, name, None, Interval(int, minimum, None))


# ---------------------------------------------------------------- energy (EIE / Horowitz)
#: 45 nm energy per operation in pJ (Horowitz, ISSCC 2014, as tabulated by Han et al. 2016, EIE).
ENERGY_PJ = {"dram_32bit": 640.0, "sram_32bit": 5.0, "fp32_mult": 3.7, "fp32_add": 0.9}
#: On-chip SRAM assumed when deciding whether weights come from DRAM (EIE: 10.2 MB in 64 PEs).
ON_CHIP_BYTES = 8 * 1024 * 1024


def energy_estimate(macs: int, weight_bytes: int, *, on_chip_bytes: int = ON_CHIP_BYTES) -> dict:
    """Energy of one inference (batch 1) from the 45 nm figures of Horowitz / EIE.

    Every weight byte is fetched once per inference, from SRAM when all weights fit in
    ``on_chip_bytes`` and from DRAM otherwise (per 32-bit access); every multiply-
    accumulate costs one fp32 multiply and one add. Activations, control and codebook
    lookups are left out (for EIE-style layers the codebook sits in registers).
    """
    level = "sram_32bit" if weight_bytes <= on_chip_bytes else "dram_32bit"
    memory = weight_bytes / 4 * ENERGY_PJ[level]
    compute = macs * (ENERGY_PJ["fp32_mult"] + ENERGY_PJ["fp32_add"])
    return {"total_uj": (memory + compute) / 1e6, "memory_uj": memory / 1e6, "compute_uj": compute / 1e6,
            "weights_from": level.split("_")[0].upper(), "weight_bytes": int(weight_bytes), "macs": int(macs)}


def energy_assumptions(on_chip_bytes: int = ON_CHIP_BYTES) -> str:
    """One line stating the energy model, for reports."""
    e = ENERGY_PJ
    return (f"45 nm (Horowitz/EIE): 32-bit DRAM {e['dram_32bit']:g} pJ, SRAM {e['sram_32bit']:g} pJ, "
            f"fp32 mult {e['fp32_mult']:g} pJ, add {e['fp32_add']:g} pJ; weights read once per inference, "
            f"from SRAM if they fit in {on_chip_bytes / 2**20:g} MiB else DRAM; activations not counted")
