"""Magnitude pruning (Han et al. 2015), masks, and AGP (Zhu & Gupta 2017)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import make_mlp
from torchshrink.errors import ModelError
from torchshrink.prune.magnitude import (
    IterativePruning,
    dropout_owners,
    iteration_targets,
    keep_smallest_removed,
    magnitude,
    prune_layer,
)
from torchshrink.prune.masks import Mask, mask_of, masks, set_mask
from torchshrink.prune.agp import AGP, agp_sparsity
from torchshrink.train import TrainConfig, fit
from torchshrink.core.transform import bake, effective_state_dict, original


def test_mask_forward_and_gradient_equal_the_mask():
    layer = nn.Linear(4, 3)
    keep = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    w0 = original(layer).detach().clone()
    set_mask(layer, keep)
    assert torch.equal(layer.weight, w0 * keep)
    assert torch.equal(original(layer).detach(), w0 * keep)  # pruned latent entries zeroed
    x = torch.randn(5, 4)
    layer(x).sum().backward()
    grad = original(layer).grad
    expected = (torch.ones(5, 3).t() @ x) * keep  # d(sum(xW^T))/dW masked
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-6)
    assert torch.all(grad[~keep] == 0)


def test_exact_per_layer_sparsity_with_ties():
    layer = nn.Linear(10, 10)
    with torch.no_grad():
        layer.weight.fill_(1.0)  # all ties: the count must still be exact
    assert prune_layer(layer, sparsity=0.37) == pytest.approx(0.37)
    assert int((layer.weight == 0).sum()) == 37


@pytest.mark.parametrize("s", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_magnitude_removes_smallest_exactly(s):
    torch.manual_seed(1)
    layer = nn.Linear(50, 40)
    w = layer.weight.detach().clone()
    magnitude(layer, s)
    n_removed = round(s * w.numel())
    assert int((layer.weight == 0).sum()) == n_removed
    if 0 < n_removed < w.numel():
        kept = w.abs()[layer.weight != 0]
        removed = w.abs()[layer.weight == 0]
        assert removed.max() <= kept.min()


def test_global_scope_is_exact_over_all_layers():
    model = make_mlp()
    magnitude(model, 0.8, scope="global")
    total = sum(m.weight.numel() for m in (model[0], model[3]))
    zeros = sum(int((m.weight == 0).sum()) for m in (model[0], model[3]))
    assert zeros == round(0.8 * total)


def test_quality_threshold_is_quality_times_std():
    torch.manual_seed(0)
    layer = nn.Linear(30, 30)
    w = layer.weight.detach().clone()
    magnitude(layer, quality=0.5)
    expected_keep = w.abs() > 0.5 * w.std()
    assert torch.equal(layer.weight != 0, expected_keep)


def test_pruning_is_monotone():
    layer = nn.Linear(20, 20)
    prune_layer(layer, sparsity=0.5)
    first = mask_of(layer).mask.clone()
    with torch.no_grad():  # make a pruned position large: it must stay pruned
        original(layer)[first == 0] = 0  # latent already zero
    prune_layer(layer, sparsity=0.7)
    assert torch.all(mask_of(layer).mask[first == 0] == 0)
    assert mask_of(layer).sparsity == pytest.approx(0.7)


def test_layer_patterns_and_errors():
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(8, 8))
    model.add_module("fc2", nn.Linear(8, 8))
    magnitude(model, {"fc1": 0.5})
    assert set(masks(model)) == {"fc1.weight"}
    with pytest.raises(ModelError, match="matches no layer"):
        magnitude(model, 0.5, layers=["conv*"])
    with pytest.raises(ModelError, match=r"\[0, 1\)"):
        magnitude(model, 1.5)
    with pytest.raises(ModelError, match="exactly one"):
        magnitude(model, 0.5, quality=1.0)


def test_nan_weights_are_refused():
    layer = nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="NaN"):
        prune_layer(layer, sparsity=0.5, name="fc")


def test_masked_weights_stay_zero_through_training(toy_data):
    model = make_mlp()
    magnitude(model, 0.75)
    before = {k: v.mask.clone() for k, v in masks(model).items()}
    grads = []

    class GradSpy(IterativePruning.__mro__[1]):  # a plain Callback
        def after_backward(self, ctx):
            grads.append(original(ctx.model[0]).grad.clone())

    fit(model, toy_data, TrainConfig(epochs=2, lr=0.1, weight_decay=1e-3, batch_size=50),
        callbacks=[GradSpy()], progress=False)
    for k, m in masks(model).items():
        assert torch.equal(m.mask, before[k])
    keep0 = before["0.weight"].bool()
    assert torch.all(model[0].weight[~keep0] == 0)
    assert torch.all(original(model[0]).detach()[~keep0] == 0)  # latent too, despite L2 + momentum
    assert all(torch.all(g[~keep0] == 0) for g in grads)
    assert any(bool(g[keep0].abs().sum() > 0) for g in grads)


def test_bake_and_effective_state_dict_agree():
    model = make_mlp()
    magnitude(model, 0.5)
    sd = effective_state_dict(model)
    assert set(sd) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    baked = bake(model)
    assert not any("parametrizations" in k for k in baked.state_dict())
    for k, v in baked.state_dict().items():
        assert torch.equal(v, sd[k])
    x = torch.randn(3, 32)
    torch.testing.assert_close(baked(x), model(x), rtol=0, atol=0)


# ---------------------------------------------------------------- iterative (Han)
def test_iteration_targets_end_at_final_and_remove_equal_fractions():
    t = iteration_targets(0.9, 3)
    assert t[-1] == pytest.approx(0.9)
    kept = [1 - s for s in t]
    assert kept[1] / kept[0] == pytest.approx(kept[2] / kept[1])


def test_iterative_pruning_reaches_targets_and_scales_dropout(toy_data):
    model = make_mlp(dropout=0.5)
    assert dropout_owners(model) == {"3": model[2]}
    cb = IterativePruning({"0": 0.8, "3": 0.6}, iterations=2, epochs_per_iteration=1)
    fit(model, toy_data, TrainConfig(epochs=3, lr=0.05, batch_size=100), callbacks=[cb], progress=False)
    assert mask_of(model[0]).sparsity == round(0.8 * 2048) / 2048  # exact count
    assert mask_of(model[3]).sparsity == round(0.6 * 640) / 640
    assert model[2].p == pytest.approx(0.5 * math.sqrt(0.4))  # Han Eq. 2


# ---------------------------------------------------------------- AGP
def test_agp_formula_step_by_step():
    si, sf, t0, dt, n = 0.1, 0.9, 20, 5, 8
    for t in range(0, 100):
        s = agp_sparsity(t, initial=si, final=sf, start=t0, frequency=dt, n=n)
        if t < t0:
            expected = si
        else:
            k = min((t - t0) // dt, n)
            expected = sf + (si - sf) * (1 - k * dt / (n * dt)) ** 3
        assert s == pytest.approx(expected, abs=1e-12)
    assert agp_sparsity(t0 + n * dt, initial=si, final=sf, start=t0, frequency=dt, n=n) == pytest.approx(sf)


def test_agp_masks_follow_the_schedule_during_training(toy_data):
    model = make_mlp()
    cb = AGP(0.9, start_epoch=1, end_epoch=3, frequency=3)
    seen = []

    class Spy(IterativePruning.__mro__[1]):
        def on_step_begin(self, ctx):
            seen.append((ctx.step, mask_of(ctx.model[0]).sparsity))

    fit(model, toy_data, TrainConfig(epochs=4, batch_size=50, lr=0.05), callbacks=[cb, Spy()], progress=False)
    for step, s in seen:  # Spy runs after AGP within the same step
        n0 = model[0].weight.numel()
        expected = round(cb.target(step, 0.9) * n0) / n0
        assert s == pytest.approx(expected), step
    assert mask_of(model[0]).sparsity == round(0.9 * 2048) / 2048
    assert mask_of(model[3]).sparsity == round(0.9 * 640) / 640
    assert cb.target(seen[-1][0], 0.9) == pytest.approx(0.9)


def test_agp_rejects_bad_window():
    with pytest.raises(ModelError, match="start_epoch < end_epoch"):
        AGP(0.5, start_epoch=3, end_epoch=2)


def test_keep_smallest_removed_counts():
    keep = keep_smallest_removed(torch.tensor([3.0, 1.0, 2.0, 1.0]), 2)
    assert keep.tolist() == [True, False, True, False]
    assert isinstance(set_mask, object) and Mask((2,)).kept == 2
