"""Runtime modules from .tsk files: compressed layers equal their decoded twins."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchshrink.errors import ModelError
from torchshrink.format import load, save
from torchshrink.models import build_model
from torchshrink.prune import magnitude
from torchshrink.quantize import product_quantize, kmeans
from torchshrink.runtime.dispatch import RuntimeModel, force, unwrap_runtime
from torchshrink.runtime.fused import FusedSharedMLP
from torchshrink.runtime.fused_net import FusedNet
from torchshrink.runtime.modules import CompressedConv2d, CompressedLinear


@pytest.fixture(autouse=True)
def _own_dispatch_cache(monkeypatch, tmp_path):
    """Measured-dispatch decisions go to a fresh cache directory per test."""
    from torchshrink.runtime import dispatch

    monkeypatch.delenv("TORCHSHRINK_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dispatch._loaded_from.clear()


def kernels(model: nn.Module) -> nn.Module:
    """The runtime layers of a loaded model, every one forced onto its kernel path."""
    return force(unwrap_runtime(model), "kernel")


def _compressed(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (CompressedLinear, CompressedConv2d))]


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_pruned_shared_zoo_model_runs_compressed_and_matches_dense(tmp_path, monkeypatch, name):
    from torchshrink.runtime import _common, fused

    monkeypatch.setattr(_common, "oversubscribed", lambda: False)  # the thread-pool paths run even under load
    monkeypatch.setattr(fused, "oversubscribed", lambda: False)
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 10)
    layers = ["fc*"] if name == "lenet300" else ["fc*", "conv2"]
    magnitude(model, 0.9, layers=layers)
    kmeans(model, layers=layers)
    save(model, tmp_path / "m.tsk")
    fast, plain = load(tmp_path / "m.tsk", batches=()), load(tmp_path / "m.tsk", dense=True)
    assert isinstance(fast, RuntimeModel)
    if name == "lenet300":  # a pure Linear/ReLU chain runs as one fused kernel
        assert isinstance(unwrap_runtime(fast), FusedSharedMLP)
    else:  # a conv/pool/Linear chain runs as one program; its twin: conv2, fc1, fc2 compressed, conv1 PyTorch
        assert isinstance(unwrap_runtime(fast), FusedNet)
        assert len(_compressed(unwrap_runtime(fast).dense_twin)) == 3
    for run in (fast, kernels(fast)):  # measured dispatch, then every kernel
        for batch in (1, 7, 33):  # 33: the multi-threaded fused path
            x = torch.randn(batch, 1, 8, 8)
            torch.testing.assert_close(run(x), plain(x), rtol=1e-5, atol=1e-5)
        x = torch.randn(64, 1, 8, 8)
        assert torch.equal(run(x).argmax(1), plain(x).argmax(1))


def test_relu_sparse_inputs_and_noncontiguous(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    magnitude(net, 0.8)
    kmeans(net, 4)
    save(net, tmp_path / "n.tsk")
    plain = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    fast = kernels(load(tmp_path / "n.tsk", model=plain))
    assert isinstance(fast, FusedSharedMLP)
    ref = load(tmp_path / "n.tsk", model=nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5)), dense=True)
    x = torch.randn(40, 3).t()  # non-contiguous
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
    zero = torch.zeros(1, 40)
    torch.testing.assert_close(fast(zero), ref(zero), rtol=0, atol=1e-6)


def test_pq_layer_runs_by_lookup_tables(tmp_path):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    product_quantize(net, subvector=4, codewords=16, layers=["0"])
    save(net, tmp_path / "p.tsk")
    mk = lambda: nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))  # noqa: E731
    fast, ref = kernels(load(tmp_path / "p.tsk", model=mk())), load(tmp_path / "p.tsk", model=mk(), dense=True)
    assert isinstance(fast[0], CompressedLinear) and isinstance(fast[2], nn.Linear)
    for batch in (1, 5):
        x = torch.randn(batch, 32)
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_shape_mismatch_at_call_time_is_clear(tmp_path):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(16, 8))
    magnitude(net, 0.5)
    kmeans(net, 3)
    save(net, tmp_path / "s.tsk")
    fast = load(tmp_path / "s.tsk", model=nn.Sequential(nn.Linear(16, 8)))
    with pytest.raises((ModelError, ValueError), match="16"):
        fast(torch.randn(2, 15))


def test_fused_chain_skips_zero_activations_exactly_like_dense(tmp_path):
    torch.manual_seed(4)
    def mk():
        return nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Dropout(0.5), nn.Linear(40, 30), nn.ReLU(),
                             nn.Linear(30, 10))

    net = mk()
    magnitude(net, 0.6)
    kmeans(net, 4)
    save(net, tmp_path / "f.tsk")
    fast, ref = kernels(load(tmp_path / "f.tsk", model=mk())), load(tmp_path / "f.tsk", model=mk(), dense=True)
    assert isinstance(fast, FusedSharedMLP)
    x = torch.randn(9, 12)
    x[:, ::2] = 0  # zero inputs are skipped
    torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"expects input \(batch, 12\)"):
        fast(torch.randn(2, 11))


def test_chain_with_a_dense_layer_is_not_fused(tmp_path):
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 3))
    kmeans(net, 4, layers=["0"])
    save(net, tmp_path / "g.tsk")
    fast = load(tmp_path / "g.tsk", model=nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 3)))
    assert isinstance(fast[0], CompressedLinear) and type(fast[2]) is nn.Linear
    assert not isinstance(unwrap_runtime(fast), FusedSharedMLP)
