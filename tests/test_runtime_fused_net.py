"""A whole small pruned CNN in one kernel call: equal to the decoded dense model within float32 rounding."""

from __future__ import annotations

import torch
from torch import nn

from torchshrink.format import load, save
from torchshrink.models import build_model
from torchshrink.prune import magnitude
from torchshrink.quantize import kmeans
from torchshrink.runtime.dispatch import FUSED, force, path_at, unwrap_runtime
from torchshrink.runtime.fused_net import FusedNet, net_chain


class Odd(nn.Module):
    """Strides, dilation, no padding, a functional ReLU and dropout: every option the program reads."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(5, 4, (3, 2), dilation=(1, 2), bias=False)
        self.pool = nn.MaxPool2d((2, 3), stride=(1, 2))
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 3 * 2, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(self.conv2(x))
        return self.fc(self.drop(torch.flatten(x, 1)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x)


def test_the_program_equals_the_plain_layers() -> None:
    torch.manual_seed(0)
    model = Odd().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_((torch.rand_like(p) > 0.6).float())  # sparse weights, some zero biases
    chain = net_chain(model)
    assert chain is not None and [type(m).__name__ for m in chain] == [
        "Conv2d", "ReLU", "Conv2d", "MaxPool2d", "Flatten", "Linear"]
    fused = FusedNet(chain)
    for n in (1, 3):
        x = torch.randn(n, 3, 11, 13)
        torch.testing.assert_close(fused.run_kernel(x), model(x), rtol=1e-5, atol=1e-5)
    assert fused.weight_bytes < sum(p.numel() for p in model.parameters()) * 8


def test_what_the_program_cannot_run_stays_unfused() -> None:
    assert net_chain(Residual()) is None  # an add of two inputs
    assert net_chain(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) is None  # no conv: the MLP fusion's job
    assert net_chain(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))) is None
    assert net_chain(nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2, padding=1))) is None


def test_a_loaded_lenet5_runs_fused_and_exact(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 8, 8), 10)
    magnitude(model, {"conv1": 0.34, "conv2": 0.88, "fc1": 0.94, "fc2": 0.81})
    kmeans(model, layers=["fc*", "conv*"])
    save(model, tmp_path / "m.tsk")
    fast, plain = load(tmp_path / "m.tsk", batches=(1,)), load(tmp_path / "m.tsk", dense=True)
    inner = unwrap_runtime(fast)
    assert isinstance(inner, FusedNet) and inner.layer_name == FUSED
    assert set(path_at(fast, 1)) >= {FUSED}  # its decision is reported
    force(fast, "kernel")
    for n in (1, 4):
        x = torch.randn(n, 1, 8, 8)
        y, ref = fast(x), plain(x)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(y.argmax(1), ref.argmax(1))


def test_every_convolution_op_equals_the_plain_layers(monkeypatch) -> None:
    """Stride 1 runs wide rows, stride 2 im2col rows; with no room for im2col, the per-position loops."""
    import torchshrink.runtime.fused_net as fn
    from torchshrink.runtime._fused_net_kernels import CONV, CONV_COLS

    torch.manual_seed(1)
    model = Odd().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_((torch.rand_like(p) > 0.5).float())
    x = torch.randn(3, 3, 11, 13)
    for cap, kinds in ((fn.MAX_COLS, [CONV_COLS, CONV_COLS]), (0, [CONV, CONV_COLS])):
        monkeypatch.setattr(fn, "MAX_COLS", cap)
        fused = FusedNet(net_chain(model))
        ops = fused.program(tuple(x.shape[1:]))[0]
        assert [int(k) for k in ops[:, 0] if k in (CONV, CONV_COLS)] == kinds  # conv1 strided, conv2 stride 1
        torch.testing.assert_close(fused.run_kernel(x), model(x), rtol=1e-5, atol=1e-5)
