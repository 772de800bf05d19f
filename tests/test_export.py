"""export: ONNX files for models and .tsk files, checked in onnxruntime against PyTorch."""

from __future__ import annotations

import subprocess
import sys

import onnx
import pytest
import torch
from torch import nn

from torchshrink.errors import ModelError, TorchshrinkError
from torchshrink.export import export_onnx
from torchshrink.format import save
from torchshrink.models import build_model
from torchshrink.prune.filters import filter_prune


def test_slimmed_tsk_exports_slim(tmp_path) -> None:
    torch.manual_seed(0)
    model = filter_prune(build_model("lenet5", (1, 8, 8), 10), (1, 8, 8), {"conv1": 0.5, "conv2": 0.4})
    save(model, tmp_path / "m.tsk")
    info = export_onnx(tmp_path / "m.tsk", tmp_path / "m.onnx")
    assert info["max_abs_diff"] <= 1e-4 and info["input_shape"] == [1, 8, 8]
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    assert [10, 1, 5, 5] in shapes.values() and [30, 10, 5, 5] in shapes.values()  # 20 -> 10, 50 -> 30 filters


def test_cli_export_and_errors(tmp_path) -> None:
    torch.manual_seed(0)
    save(build_model("lenet300", (1, 8, 8), 10), tmp_path / "m.tsk")
    run = [sys.executable, "-m", "torchshrink.cli", "export"]
    ok = subprocess.run([*run, str(tmp_path / "m.tsk"), "--onnx", str(tmp_path / "m.onnx")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "onnxruntime matches" in ok.stdout and (tmp_path / "m.onnx").stat().st_size > 0
    bad = subprocess.run([*run, str(tmp_path / "missing.tsk"), "--onnx", str(tmp_path / "x.onnx")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "missing.tsk" in bad.stderr


class Mismatch(nn.Module):
    """Exports fine but runs differently in onnxruntime: the check must catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def test_a_mismatch_is_an_error_and_leaves_no_file(tmp_path) -> None:
    with pytest.raises(TorchshrinkError, match="onnxruntime disagrees"):
        export_onnx(Mismatch(), tmp_path / "m.onnx", input_shape=(3,))
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(ModelError, match="input_shape"):
        export_onnx(nn.Linear(2, 2), tmp_path / "l.onnx")
