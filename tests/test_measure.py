"""Tests of torchshrink.measure against hand-computed figures."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import TensorDataset

from torchshrink import measure
from torchshrink.errors import ModelError


class FixedMask(nn.Module):
    """A test-only parametrization: multiply the weight by a fixed 0/1 mask."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def masked_linear() -> nn.Linear:
    """Linear(4, 3), weights 1..12, bias ones, 5 of 12 weights masked to zero."""
    fc = nn.Linear(4, 3)
    with torch.no_grad():
        fc.weight.copy_(torch.arange(1.0, 13.0).reshape(3, 4))
        fc.bias.fill_(1.0)
    mask = torch.ones(3, 4)
    mask[0, :3] = 0  # 3 zeros
    mask[2, 1:3] = 0  # 2 zeros
    parametrize.register_parametrization(fc, "weight", FixedMask(mask))
    return fc


def grouped_conv() -> nn.Conv2d:
    """Conv2d(4 -> 6, 3x3, stride 2, padding 1, groups 2); first filter all zero."""
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    with torch.no_grad():
        conv.weight.fill_(0.5)
        conv.weight[0].zero_()  # 2 * 3 * 3 = 18 zeros
        conv.bias.fill_(1.0)
    return conv


class Twice(nn.Module):
    """Uses the same Linear twice: its MACs count twice."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.unused = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.fc(x))


def test_linear_with_mask() -> None:
    model = nn.Sequential(masked_linear())
    [s] = measure.layer_stats(model, (4,))
    assert (s.name, s.kind, s.shape) == ("0", "linear", [3, 4])
    assert s.params == 15
    assert s.nonzeros == 7 + 3
    assert s.sparsity == pytest.approx(5 / 12, abs=1e-12)
    assert (s.macs_dense, s.macs_effective) == (12, 7)
    assert s.fp32_bytes == 60
    assert s.bits_per_weight == 32.0
    assert s.to_dict()["macs_effective"] == 7


def test_grouped_strided_conv() -> None:
    # H_out = floor((9 + 2*1 - 3) / 2) + 1 = 5; weight (6, 4/2, 3, 3) = 108 entries.
    model = nn.Sequential(grouped_conv())
    [s] = measure.layer_stats(model, (4, 9, 9))
    assert (s.kind, s.shape) == ("conv2d", [6, 2, 3, 3])
    assert (s.params, s.nonzeros) == (114, 90 + 6)
    assert s.sparsity == pytest.approx(18 / 108, abs=1e-12)
    assert s.macs_dense == 108 * 25
    assert s.macs_effective == 90 * 25


def test_conv_macs_match_reference_count() -> None:
    """Reference: a conv of all-ones input and 0/1 weights, no padding, counts the MACs."""
    conv = nn.Conv2d(3, 4, (3, 2), stride=(1, 2), bias=False)
    torch.manual_seed(0)
    with torch.no_grad():
        conv.weight.mul_((torch.rand_like(conv.weight) > 0.5).float())
    [s] = measure.layer_stats(conv, (3, 7, 8))
    indicator = (conv.weight != 0).float()
    ref = nn.functional.conv2d(torch.ones(1, 3, 7, 8), indicator, stride=(1, 2)).sum()
    assert s.name == ""
    assert s.macs_effective == int(ref)


def test_shared_and_unused_layers() -> None:
    stats = {s.name: s for s in measure.layer_stats(Twice(), (5,))}
    assert stats["fc"].macs_dense == 2 * 25
    assert stats["unused"].macs_dense == 0


def test_layer_stats_keeps_modes_and_weights() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(18, 2))
    model.train()
    model[3].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measure.layer_stats(model, (1, 5, 5))
    assert [m.training for m in model] == [True, True, True, False]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def small_net() -> nn.Sequential:
    conv = nn.Conv2d(1, 2, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1.0, 19.0).reshape(2, 1, 3, 3))
        conv.bias.fill_(1.0)
    fc = nn.Linear(18, 4)
    with torch.no_grad():
        fc.weight.fill_(0.1)
        fc.bias.fill_(1.0)
    mask = torch.ones(4, 18)
    mask[:, :9] = 0  # 36 of 72 weights masked
    parametrize.register_parametrization(fc, "weight", FixedMask(mask))
    return nn.Sequential(conv, nn.BatchNorm2d(2), nn.Flatten(), fc)


def test_model_summary() -> None:
    s = measure.model_summary(small_net(), (1, 5, 5))
    # conv 18 + 2, bn 2 + 2, fc 72 + 4 parameters; buffers 2 + 2 fp32 and one int64.
    assert s["params"] == 100
    # conv 20, bn weight 2 (bias zeros), fc 36 weights + 4 biases.
    assert s["nonzero_params"] == 20 + 2 + 36 + 4
    assert (s["weight_params"], s["weight_nonzeros"]) == (90, 54)
    assert s["macs_dense"] == 18 * 9 + 72
    assert s["macs_effective"] == 18 * 9 + 36
    assert s["dense_bytes"] == 4 * (100 + 4) + 8


def test_state_dict_bytes_is_safetensors_size() -> None:
    model = small_net().double()
    sd = {
        "0.weight": model[0].weight.float(), "0.bias": model[0].bias.float(),
        "1.weight": model[1].weight.float(), "1.bias": model[1].bias.float(),
        "1.running_mean": model[1].running_mean.float(),
        "1.running_var": model[1].running_var.float(),
        "1.num_batches_tracked": model[1].num_batches_tracked,
        "3.weight": model[3].weight.detach().float(), "3.bias": model[3].bias.float(),
    }
    expected = len(save({k: v.detach().contiguous() for k, v in sd.items()}))
    n = measure.state_dict_bytes(model)
    assert n == expected
    assert n > 4 * 100


def test_latency_and_mode() -> None:
    model = small_net()
    model.train()
    out = measure.latency_ms(model, (1, 5, 5), 4, repeats=5, warmup=1)
    assert out["runs"] == 5
    assert 0 < out["median_ms"] <= out["p90_ms"]
    assert model.training and all(m.training for m in model.modules())
    table = measure.latency_table(model.eval(), (1, 5, 5), batches=(1, 8), repeats=3, warmup=0)
    assert set(table) == {"batch_1", "batch_8"}
    assert not model.training


class Slow(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.01)
        return x


def test_latency_stops_early_with_three_runs() -> None:
    out = measure.latency_ms(Slow(), (2,), 1, repeats=100, warmup=0, max_seconds=0.001)
    assert out["runs"] == 3
    assert out["median_ms"] >= 10.0


def test_evaluate_known_answers() -> None:
    from torchshrink.train import evaluate

    fc = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.eye(3))  # prediction = argmax of the input
    x = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [2, 1, 0], [0, 5, 1]])
    y = torch.tensor([0, 1, 0, 0, 2])  # samples 2 and 4 are wrong
    fc.train()
    assert evaluate(fc, TensorDataset(x, y), batch_size=2)["accuracy"] == pytest.approx(0.6, abs=1e-12)
    assert fc.training


def test_rejects_non_module() -> None:
    with pytest.raises(ModelError, match="torch.nn.Module"):
        measure.layer_stats([nn.Linear(2, 2)], (2,))


@pytest.mark.parametrize("shape", [(0, 8), (), (2, -1), "8", (2.0,)])
def test_rejects_bad_shape(shape: object) -> None:
    with pytest.raises(ModelError, match="input_shape"):
        measure.layer_stats(nn.Linear(2, 2), shape)


def test_forward_failure_names_shape() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 2))
    with pytest.raises(ModelError, match=r"does not accept input of shape \(1, 8, 8\): .*shapes"):
        measure.layer_stats(model, (1, 8, 8))


def test_latency_rejects_bad_batch() -> None:
    with pytest.raises(ModelError, match="batch_size"):
        measure.latency_ms(nn.Linear(2, 2), (2,), 0)
