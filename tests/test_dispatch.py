"""Measured dispatch: each runtime layer runs its kernel or its decoded dense twin, whichever is faster.

Timing is made deterministic with layers that sleep: a path that sleeps 3 ms is always
the slower one, whatever the load. No figure of speed is asserted here (speed lives in
the benchmarks); what is checked is the choice, the cache, the exactness of either
path and the reporting.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from torchshrink.cache_dir import cache_root
from torchshrink.errors import ModelError
from torchshrink.format import load, save
from torchshrink.measure import compare_latency, weight_bytes_touched
from torchshrink.models import build_model
from torchshrink.prune import magnitude
from torchshrink.quantize import kmeans
from torchshrink.runtime import decisions, dispatch
from torchshrink.runtime.dispatch import (
    Dispatched,
    RuntimeModel,
    attach_twin,
    calibrate,
    force,
    paths,
)
from torchshrink.runtime.modules import CompressedLinear


@pytest.fixture(autouse=True)
def cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHSHRINK_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dispatch._loaded_from.clear()
    return tmp_path / "cache"


class Slow(nn.Module):
    """``inner`` after a sleep: always the slower path."""

    def __init__(self, inner: nn.Module, weight_bytes: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        if weight_bytes is not None:
            self.weight_bytes = weight_bytes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.003)
        return self.inner(x)


def linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(6, 4)


def test_the_faster_path_is_chosen_per_shape_and_both_are_exact() -> None:
    lin = linear()
    slow_kernel = attach_twin(Slow(linear(), weight_bytes=10), lin, "fc")
    assert isinstance(slow_kernel, Dispatched) and slow_kernel.dense_twin is lin
    x = torch.randn(3, 6)
    assert torch.equal(slow_kernel(x), lin(x))
    assert slow_kernel.decisions[(3, 6)]["path"] == "dense"
    fast_kernel = attach_twin(linear(), Slow(lin), "fc")  # a plain module is no runtime layer: unchanged
    assert type(fast_kernel) is nn.Linear
    fast_kernel = attach_twin(Dispatched(Slow(linear(), 10)), Slow(lin), "fc")
    fast_kernel.inner.forward = linear().forward  # the kernel is now the quick one
    assert torch.equal(fast_kernel(x), lin(x))
    assert fast_kernel.decisions[(3, 6)]["path"] == "kernel"
    assert [r["path"] for r in paths(fast_kernel)] == ["kernel"]


def test_decisions_are_cached_per_machine_and_reused(cache_dir, monkeypatch) -> None:
    lin = linear()
    attach_twin(Slow(linear(), weight_bytes=10), lin, "fc")(torch.randn(2, 6))
    files = list((cache_dir / "torchshrink").glob("dispatch-*.json"))
    assert [f.name for f in files] == [f"dispatch-{dispatch.fingerprint()}.json"]
    entries = json.loads(files[0].read_text())["entries"]
    assert len(entries) == 1 and next(iter(entries.values()))["path"] == "dense"
    dispatch._loaded_from.clear()  # a new process: read back from disk, no timing
    monkeypatch.setattr(dispatch, "time_paths", lambda *a: pytest.fail("timed a cached decision in full"))
    again = attach_twin(Slow(linear(), weight_bytes=10), linear(), "fc")
    again(torch.randn(2, 6))
    got = dict(again.decisions[(2, 6)])
    verified = got.pop("verified")  # re-checked at load with a few calls of each path
    assert got == {**next(iter(entries.values())), "cached": True}
    assert verified["kernel_ms"] > verified["dense_ms"]
    dispatch.clear_cache()
    assert not files[0].exists()


def test_a_damaged_cache_is_measured_again(cache_dir) -> None:
    path = dispatch.cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    m = attach_twin(Slow(linear(), weight_bytes=10), linear(), "fc")
    m(torch.randn(1, 6))
    assert m.decisions[(1, 6)]["cached"] is False and json.loads(path.read_text())["format"] == decisions._CACHE_FORMAT


def entries(cache_dir) -> dict:
    path = cache_dir / "torchshrink" / f"dispatch-{dispatch.fingerprint()}.json"
    return json.loads(path.read_text())["entries"] if path.exists() else {}


def test_a_stale_cached_decision_is_dropped_at_load(cache_dir, monkeypatch) -> None:
    loaded = {"kernel_ms": 0.5, "dense_ms": 2.0, "kernel_p20_ms": 0.45, "dense_p20_ms": 1.8,
              "kernel_p80_ms": 0.55, "dense_p80_ms": 2.2}  # timed while dense's threads were starved
    with monkeypatch.context() as mp:
        mp.setattr(dispatch, "time_paths", lambda *a: loaded)
        attach_twin(Slow(linear(), 10), linear(), "fc")(torch.randn(2, 6))
    assert [e["path"] for e in entries(cache_dir).values()] == ["kernel"]
    dispatch._loaded_from.clear()  # a new process, on a quiet machine: the kernel is the slow path
    slow = attach_twin(Slow(linear(), 10), linear(), "fc")
    slow(torch.randn(2, 6))
    d = slow.decisions[(2, 6)]
    assert d["path"] == "dense" and d["cached"] is False  # the check at load failed: measured again
    assert [e["path"] for e in entries(cache_dir).values()] == ["dense"]


def test_a_decision_within_the_noise_is_not_cached(cache_dir, monkeypatch) -> None:
    even = {"kernel_ms": 1.0, "dense_ms": 1.02, "kernel_p20_ms": 0.6, "dense_p20_ms": 0.6,
            "kernel_p80_ms": 1.8, "dense_p80_ms": 1.8}
    monkeypatch.setattr(dispatch, "time_paths", lambda *a: even)
    m = attach_twin(Slow(linear(), 10), linear(), "fc")
    m(torch.randn(2, 6))
    d = m.decisions[(2, 6)]
    assert d["path"] == "dense" and not d["clear"] and d["margin"] < d["noise"]
    assert entries(cache_dir) == {}
    v = decisions.verdict({**even, "kernel_ms": 0.5, "kernel_p20_ms": 0.45, "kernel_p80_ms": 0.55,
                           "dense_p20_ms": 0.95, "dense_p80_ms": 1.1})
    assert v["path"] == "kernel" and v["clear"]  # 2x apart with narrow spreads: worth caching


def test_a_cache_of_other_software_is_ignored(cache_dir, monkeypatch) -> None:
    attach_twin(Slow(linear(), 10), linear(), "fc")(torch.randn(2, 6))
    path = dispatch.cache_path()
    doc = json.loads(path.read_text())
    assert doc["stamp"] == dispatch.stamp() and len(doc["entries"]) == 1
    path.write_text(json.dumps({**doc, "stamp": "another-build"}))
    dispatch._loaded_from.clear()
    m = attach_twin(Slow(linear(), 10), linear(), "fc")
    m(torch.randn(2, 6))
    assert m.decisions[(2, 6)]["cached"] is False


def test_one_cache_root_for_every_cache(monkeypatch, tmp_path) -> None:
    from torchshrink.policy import latency

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "torchshrink"
    monkeypatch.setenv("TORCHSHRINK_CACHE", str(tmp_path / "own"))
    assert cache_root() == tmp_path / "own"
    assert dispatch.cache_path().parent == latency.cache_path().parent == tmp_path / "own"
    monkeypatch.delenv("TORCHSHRINK_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "torchshrink"


def test_force_and_gradients_take_the_dense_twin() -> None:
    lin = linear()
    m = attach_twin(Slow(linear(1), weight_bytes=10), lin, "fc")
    x = torch.randn(2, 6)
    force(m, "kernel")
    assert torch.equal(m(x), linear(1)(x))
    force(m, None)
    with pytest.raises(ModelError, match="'path' parameter must be one of"):
        force(m, "fastest")
    xg = torch.randn(2, 6, requires_grad=True)
    m(xg).sum().backward()  # autograd runs through the decoded layer
    assert xg.grad is not None and lin.weight.grad is not None


def test_the_twin_is_outside_the_module_tree() -> None:
    k = Slow(linear(), weight_bytes=10)
    m = attach_twin(k, linear(), "fc")
    assert list(m.parameters()) == list(k.parameters())
    assert set(m.state_dict()) == {f"inner.{key}" for key in k.state_dict()}


@pytest.fixture()
def shared_lenet(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 8, 8), 10)
    magnitude(model, 0.9, layers=["fc*", "conv2"])
    kmeans(model, layers=["fc*", "conv2"])
    save(model, tmp_path / "m.tsk")
    return tmp_path / "m.tsk"


def test_load_decides_every_layer_for_the_batches_asked(shared_lenet) -> None:
    fast, plain = load(shared_lenet, batches=(1, 3)), load(shared_lenet, dense=True)
    assert isinstance(fast, RuntimeModel) and fast.conv1 is fast.inner.conv1  # attributes pass through
    rows = paths(fast)
    assert {(r["layer"], r["batch"]) for r in rows} >= {("(whole model)", 1), ("(whole model)", 3)}
    assert all(r["path"] in ("kernel", "dense") and r["kernel_ms"] > 0 and r["dense_ms"] > 0 for r in rows)
    for b in (1, 3, 5):  # 5: decided on the first call
        x = torch.randn(b, 1, 8, 8)
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    assert any(r["batch"] == 5 for r in paths(fast))
    calls: list[int] = []
    fast.register_forward_hook(lambda *a: calls.append(1))  # hooks still run on the decided fast route
    fast(torch.randn(1, 1, 8, 8))
    assert calls == [1]
    layers = [m for m in fast.inner.modules() if isinstance(m, CompressedLinear)]
    for m in layers:  # a layer left in place chose its kernel at some batch size (the others were settled)
        assert any(d["path"] == "kernel" for d in m.decisions.values())


def test_weight_bytes_touched_follow_the_path(shared_lenet) -> None:
    fast, plain = load(shared_lenet, batches=()), load(shared_lenet, dense=True)
    dense_bytes = sum(p.numel() * 4 for p in plain.parameters())
    assert weight_bytes_touched(plain) == dense_bytes
    calibrate(force(fast, "kernel"), (1, 8, 8), (1,))
    kernel_bytes = weight_bytes_touched(fast, 1)
    fc1 = fast.inner.fc1
    assert kernel_bytes < dense_bytes and fc1.weight_bytes + 4 * fc1.bias.numel() < 4 * fc1.weight_.to_dense().size
    force(fast, "dense")
    assert weight_bytes_touched(fast, 1) == dense_bytes


def test_compare_latency_reports_min_median_spread() -> None:
    res = compare_latency({"a": linear(), "b": linear(1)}, (6,), 2, min_rounds=2, min_runs=5, max_seconds=0.5)
    assert set(res) == {"models", "rounds", "stable", "noisy", "seconds"} and res["rounds"] >= 2
    for s in res["models"].values():
        assert s["min_ms"] <= s["median_ms"] <= s["p90_ms"] and s["runs"] >= 5 and s["spread"] >= 0
    with pytest.raises(ModelError, match="at least one model"):
        compare_latency({}, (6,), 1)


def test_the_runtime_model_holds_the_decoded_weights_once(shared_lenet) -> None:
    """Layer twins are the plain model's own layers; layers without a kernel share its tensors."""
    from torchshrink.runtime.dispatch import dispatching
    from torchshrink.runtime.fused_net import FusedNet

    fast = load(shared_lenet, batches=())
    plain = fast.dense_twin
    inner = fast.inner
    per_layer = inner.dense_twin if isinstance(inner, FusedNet) else inner
    assert per_layer.conv1.weight.data_ptr() == plain.conv1.weight.data_ptr()  # conv1 has no kernel: shared
    twins = {m.layer_name: m.dense_twin for _, m in dispatching(fast) if m.layer_name in ("fc1", "fc2", "conv2")}
    assert set(twins) == {"fc1", "fc2", "conv2"}
    assert all(t is plain.get_submodule(name) for name, t in twins.items())


def test_drop_twins_keeps_only_the_twins_a_dense_decision_needs(shared_lenet) -> None:
    from torchshrink.runtime.dispatch import dispatching, drop_twins

    fast, plain = load(shared_lenet, batches=()), load(shared_lenet, dense=True)
    x = torch.randn(1, 1, 8, 8)
    modules = dispatching(fast)
    for _, m in modules:  # decided by hand: timing-free
        m.decisions[tuple(x.shape)] = {"path": "dense" if m.layer_name == "fc2" else "kernel"}
    undecided = next(m for _, m in modules if m.layer_name == "fc1")
    undecided.decisions.clear()
    assert drop_twins(fast) == len(modules) - 2
    kept = {m.layer_name for _, m in modules if m.dense_twin is not None}
    assert kept == {"fc1", "fc2"} and fast.dense_twin is None
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    lean = load(shared_lenet, batches=(1,), lean=True)  # the same through load, with measured decisions
    for _, m in dispatching(lean):
        assert m.dense_twin is None or any(d["path"] == "dense" for d in m.decisions.values())
    torch.testing.assert_close(lean(x), plain(x), rtol=1e-5, atol=1e-5)
