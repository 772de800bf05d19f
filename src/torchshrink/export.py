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
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
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
    with torch.no_grad():
        ref = model(x)
    if not isinstance(ref, torch.Tensor):
        raise ModelError("ONNX export supports models with a single tensor output")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (x,), str(out), dynamo=False, opset_version=opset, input_names=["input"],
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
