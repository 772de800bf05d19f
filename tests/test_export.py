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


def test_pool_matrix_is_adaptive_average_pooling() -> None:
    from torchshrink.export import pool_matrix

    x = torch.randn(2, 3, 11)
    for n, m in ((2, 7), (11, 7), (7, 3), (5, 5), (1, 4)):
        want = nn.functional.adaptive_avg_pool1d(x[..., :n], m)
        torch.testing.assert_close(x[..., :n] @ pool_matrix(n, m).t(), want, atol=1e-6, rtol=0)


def test_adaptive_pool_whose_output_does_not_divide_its_input_exports(tmp_path) -> None:
    torch.manual_seed(0)  # torchvision's VGG head at a small input: 2x2 pooled to 7x7, and 5x5 to 3x3
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(4), nn.AdaptiveAvgPool2d(7),
                          nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d((3, None)), nn.Flatten(), nn.Linear(60, 5)).eval()
    info = export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 8, 8))
    assert info["max_abs_diff"] <= 1e-4
    assert isinstance(model[2], nn.AdaptiveAvgPool2d)  # the model itself is left as it was


def test_a_failed_export_prints_nothing_to_stdout(tmp_path, capfd) -> None:
    """The TorchScript exporter dumps its graph to the C-level stdout on failure (it would corrupt --json)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveMaxPool2d(3), nn.Flatten()).eval()
    with pytest.raises(Exception, match="adaptive_max_pool2d"):
        export_onnx(model, tmp_path / "m.onnx", input_shape=(3, 4, 4))
    assert capfd.readouterr().out == ""
