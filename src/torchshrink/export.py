"""ONNX export of any model or ``.tsk`` file, checked in onnxruntime before success is reported.

A ``.tsk`` file is loaded as its decoded dense model (``load(dense=True)``: the surgery plan
is replayed, so a slimmed model stays slim; packed weights are decoded to float32, which
ONNX runs as plain ``Conv``/``Gemm``; ONNX has no operator for our packed forms, so the
exported graph stores them dense). The model is written with PyTorch's TorchScript-based
exporter (``torch.onnx.export(..., dynamo=False)``): the default dynamo exporter of torch
2.13 needs the ``onnxscript`` package, and the TorchScript path needs nothing beyond
``onnx`` and works offline. Batch size is dynamic. The written file is checked with
``onnx.checker`` and run in onnxruntime (CPU) on a fixed random batch; outputs must match
PyTorch's within ``atol + rtol·|y|``, or a :class:`~torchshrink.errors.TorchshrinkError`
names the largest difference and the file is removed.

Two details of the TorchScript exporter are handled here. It has no ONNX form for an
``AdaptiveAvgPool2d`` whose output size does not divide its input size (torchvision's VGG
pools to 7×7, also from 2×2 at a small input); as the exported graph has a fixed spatial
size, each such pool is exported as the linear map it is at that size,
``y = P_h · x · P_wᵀ`` with ``P[i, j] = 1/|bin_i|`` for ``j`` in bin ``i`` (bins
``[⌊i·n/m⌋, ⌈(i+1)·n/m⌉)``, PyTorch's adaptive pooling), and onnxruntime checks the
result like everything else. When it fails it prints its whole graph to the C-level
stdout, which would corrupt a caller's JSON output: stdout is sent to ``/dev/null``
while it runs (its exception carries the reason).
"""

from __future__ import annotations

import copy
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .core.params import Interval, check
from .core.select import unwrap
from .core.transform import bake
from .errors import ModelError, TorchshrinkError

OPSET = 17
ATOL, RTOL = 1e-4, 1e-3


def _deps() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - both are dependencies
        raise TorchshrinkError(f"ONNX export needs the onnx and onnxruntime packages ({exc.name} is missing)") from None
    return onnx, onnxruntime


def _model_and_shape(source: Any, input_shape: Sequence[int] | None) -> tuple[nn.Module, tuple[int, ...]]:
    if isinstance(source, nn.Module):
        model = bake(unwrap(source))
        spec = getattr(source, "zoo_spec", None)
    else:
        from .format import load, read_tsk

        f = read_tsk(source)
        model, spec = load(f, dense=True), f.zoo_spec
    if input_shape is None:
        if not spec:
            raise ModelError("the model records no input shape (no zoo_spec): pass input_shape=(C, H, W)")
        input_shape = spec["input_shape"]
    shape = tuple(int(check(d, "input_shape", "export_onnx", Interval(int, 1, None))) for d in input_shape)
    return model.float().cpu().eval(), shape


class PoolMatrix(nn.Module):
    """An ``AdaptiveAvgPool2d`` at one fixed input size, as two matrix products (exportable to ONNX)."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("ph", pool_matrix(in_hw[0], out_hw[0]))
        self.register_buffer("pwt", pool_matrix(in_hw[1], out_hw[1]).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.ph, x), self.pwt)


def pool_matrix(n: int, m: int) -> torch.Tensor:
    """The ``m × n`` matrix of 1-D adaptive average pooling from ``n`` to ``m`` entries."""
    p = torch.zeros(m, n)
    for i in range(m):
        lo, hi = (i * n) // m, -((-(i + 1) * n) // m)
        p[i, lo:hi] = 1.0 / (hi - lo)
    return p


def _unexportable_pools(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, PoolMatrix], torch.Tensor]:
    """Run ``model`` on ``x``; return its output and a :class:`PoolMatrix` for each adaptive pool
    the exporter refuses (an output size that does not divide the input size)."""
    seen: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            seen.setdefault(name, tuple(args[0].shape[-2:]))
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules()
             if isinstance(m, nn.AdaptiveAvgPool2d)]
    try:
        with torch.no_grad():
            ref = model(x)
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, PoolMatrix] = {}
    for name, in_hw in seen.items():
        size = model.get_submodule(name).output_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        out_hw = tuple(n if o is None else int(o) for n, o in zip(in_hw, size))
        if any(n % o for n, o in zip(in_hw, out_hw)):
            out[name] = PoolMatrix(in_hw, out_hw)  # type: ignore[arg-type]
    return out, ref


def _replaced(model: nn.Module, modules: dict[str, nn.Module]) -> nn.Module:
    if not modules:
        return model
    if "" in modules:  # the model is itself the pool
        return modules[""]
    model = copy.deepcopy(model)
    for name, module in modules.items():
        model.set_submodule(name, module)
    return model


@contextmanager
def _stdout_silenced() -> Iterator[None]:
    """Send file descriptor 1 (C and Python stdout) to ``/dev/null`` for the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(source: str | Path | nn.Module, out: str | Path, *, input_shape: Sequence[int] | None = None,
                opset: int = OPSET, atol: float = ATOL, rtol: float = RTOL, batch: int = 4) -> dict[str, Any]:
    """Write ``source`` (a ``.tsk`` path or a model) to ``out`` as ONNX and check it in onnxruntime.

    Returns ``{"path", "bytes", "opset", "input_shape", "max_abs_diff", "checked_batch"}``.
    """
    onnx, ort = _deps()
    check(opset, "opset", "export_onnx", Interval(int, 11, 21))
    check(batch, "batch", "export_onnx", Interval(int, 1, 4096))
    model, shape = _model_and_shape(source, input_shape)
    out = Path(out)
    x = torch.randn((batch, *shape), generator=torch.Generator().manual_seed(0))
    pools, ref = _unexportable_pools(model, x)
    if not isinstance(ref, torch.Tensor):
        raise ModelError("ONNX export supports models with a single tensor output")
    with warnings.catch_warnings(), _stdout_silenced():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(_replaced(model, pools), (x,), str(out), dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    try:
        onnx.checker.check_model(str(out))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        sess = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
        want = ref.numpy()
        if got.shape != want.shape:
            raise TorchshrinkError(f"onnxruntime output shape {got.shape} differs from PyTorch's {want.shape}")
        diff = np.abs(got - want)
        if not bool((diff <= atol + rtol * np.abs(want)).all()):
            raise TorchshrinkError(f"onnxruntime disagrees with PyTorch on {out}: max |diff| {diff.max():.3g} "
                                   f"(atol {atol}, rtol {rtol}); the file was removed")
    except Exception:
        if out.exists():
            os.remove(out)
        raise
    return {"path": str(out), "bytes": out.stat().st_size, "opset": opset, "input_shape": list(shape),
            "max_abs_diff": float(diff.max()), "checked_batch": batch}
