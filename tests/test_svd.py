"""Tests of truncated-SVD low-rank factorization and its surgery plan."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_mlp
from torch import nn

from torchshrink.errors import ModelError
from torchshrink.factorize import LowRankLinear, compression_rate_svd, low_rank, low_rank_params
from torchshrink.format import load, save
from torchshrink.models import build_model
from torchshrink.prune import magnitude
from torchshrink.surgery import replay_plan


def _linear(out_f: int, in_f: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f)


@pytest.mark.parametrize("out_f,in_f", [(12, 20), (20, 12), (8, 8)])
def test_full_rank_reproduces_layer(out_f, in_f):
    lin = _linear(out_f, in_f)
    lr = LowRankLinear.from_linear(lin, min(out_f, in_f))
    x = torch.randn(5, in_f, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(lr(x), lin(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(lr.dense_weight(), lin.weight, atol=1e-5, rtol=0)


def test_factor_shapes_and_sqrt_split():
    lin = _linear(6, 10)
    lr = LowRankLinear.from_linear(lin, 3)
    assert lr.first.weight.shape == (3, 10) and lr.first.bias is None
    assert lr.second.weight.shape == (6, 3) and torch.equal(lr.second.bias, lin.bias)
    # sqrt(Σ) in both factors: column norms of `second` equal row norms of `first`
    torch.testing.assert_close(lr.second.weight.norm(dim=0), lr.first.weight.norm(dim=1), atol=1e-5, rtol=0)


def test_truncation_matches_eckart_young_error():
    lin = _linear(16, 24, seed=2)
    s = torch.linalg.svdvals(lin.weight.detach().double())
    errs = []
    for r in range(1, 17):
        err = float((LowRankLinear.from_linear(lin, r).dense_weight() - lin.weight).detach().norm())
        errs.append(err)
        assert err == pytest.approx(float(s[r:].square().sum().sqrt()), abs=1e-5)
    assert all(a > b for a, b in zip(errs, errs[1:]))


def test_parameter_count_formula():
    lr = LowRankLinear.from_linear(_linear(30, 50), 7)
    assert sum(p.numel() for p in lr.parameters()) == low_rank_params(30, 50, 7) == 7 * 80 + 30
    assert low_rank_params(30, 50, 7, bias=False) == 560


def test_compression_rate_svd_by_hand():
    assert compression_rate_svd(4096, 9216, 100) == pytest.approx(4096 * 9216 / (100 * (4096 + 9216)), rel=1e-12)


def test_low_rank_returns_a_new_model_and_records_plan():
    original = make_mlp(seed=0)
    model = low_rank(original, {"0": 8, "3": 0.5})
    assert model is not original and isinstance(original[0], nn.Linear) and not hasattr(original, "surgery")
    assert isinstance(model[0], LowRankLinear) and model[0].rank == 8
    assert isinstance(model[3], LowRankLinear) and model[3].rank == 5  # 0.5 * min(10, 64)
    assert model.surgery == [{"op": "low_rank", "layer": "0", "rank": 8}, {"op": "low_rank", "layer": "3", "rank": 5}]
    assert json.loads(json.dumps(model.surgery)) == model.surgery
    assert model(torch.zeros(2, 32)).shape == (2, 10)


def test_low_rank_appends_to_existing_plan_and_skips_uncovered_layers():
    model = low_rank(make_mlp(seed=0), {"3": 2})
    model = low_rank(model, {"0": 3}, layers="0")
    assert isinstance(model[0], LowRankLinear) and isinstance(model[3], LowRankLinear)
    assert model.surgery == [{"op": "low_rank", "layer": "3", "rank": 2}, {"op": "low_rank", "layer": "0", "rank": 3}]


def test_rank_key_that_matches_no_layer_raises():
    with pytest.raises(ModelError, match=r"'rank' has the key 'fc9', which matches no layer; layers are: 0, 3"):
        low_rank(make_mlp(seed=0), {"fc9": 2})


def test_low_rank_uses_effective_pruned_weight():
    model = make_mlp(seed=0)
    magnitude(model, sparsity=0.6, layers="0")
    dense = model[0].weight.detach().clone()
    model = low_rank(model, 32, layers="0")
    torch.testing.assert_close(model[0].dense_weight().detach(), dense, atol=1e-5, rtol=0)


def test_replay_gives_same_state_dict_keys_and_shapes():
    model = low_rank(make_mlp(seed=0), {"0": 4, "3": 3})
    fresh = make_mlp(seed=1)
    replay_plan(fresh, json.loads(json.dumps(model.surgery)))
    a, b = model.state_dict(), fresh.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    fresh.load_state_dict(a)
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fresh(x), model(x))
    assert fresh.surgery == model.surgery


def test_default_selection_skips_factors_of_low_rank_layers():
    model = low_rank(make_mlp(seed=0), 4)
    with pytest.raises(ModelError, match="no nn.Linear layer to factorize"):
        low_rank(model, 2)
    assert model[0].rank == 4 and type(model[0].first) is nn.Linear
    assert [e["layer"] for e in model.surgery] == ["0", "3"]


def test_conv_layer_raises():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(ModelError, match="supports nn.Linear only"):
        low_rank(model, 2, layers="*")


def test_default_selection_ignores_conv_layers():
    model = low_rank(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)), 1)
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[2], LowRankLinear)


@pytest.mark.parametrize("rank", [0, 11, 1.5, 0.0, True, "3"])
def test_bad_rank_raises(rank):
    with pytest.raises(ModelError, match="'rank\\[3\\]' parameter must be an int in \\[1, 10\\]"):
        low_rank(make_mlp(), rank, layers="3")


def test_replay_of_unknown_op_raises():
    with pytest.raises(ModelError, match="surgery step 0 has the unknown op 'remove_filters'; known ops: low_rank"):
        replay_plan(make_mlp(), [{"op": "remove_filters", "layer": "0"}])


def test_replay_of_malformed_op_raises():
    with pytest.raises(ModelError, match=r"surgery step 0 \(low_rank\) is malformed: rank"):
        replay_plan(make_mlp(), [{"op": "low_rank", "layer": "0", "rank": "x"}])


def test_replay_of_missing_layer_raises():
    with pytest.raises(ModelError, match="surgery plan names layer 'fc9', which the model does not have"):
        replay_plan(make_mlp(), [{"op": "low_rank", "layer": "fc9", "rank": 2}])


def test_low_rank_zoo_model_saves_and_reloads_exactly(tmp_path):
    """A real zoo model through surgery -> .tsk -> load: the plan is replayed and outputs match."""
    torch.manual_seed(0)
    model = low_rank(build_model("lenet300", (1, 8, 8), 10), {"fc1": 16, "fc2": 0.25})
    save(model, tmp_path / "lr.tsk")
    x = torch.randn(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    for dense in (True, False):
        loaded = load(tmp_path / "lr.tsk", dense=dense)
        assert isinstance(loaded.fc1, LowRankLinear) and loaded.fc1.rank == 16 and loaded.fc2.rank == 25
        assert loaded.surgery == model.surgery
        assert torch.equal(loaded(x), model.eval()(x))


def test_save_refuses_a_plan_load_could_not_replay(tmp_path):
    from torchshrink.errors import TskFormatError

    model = make_mlp()
    model.surgery = [{"op": "remove_filters", "layer": "0"}]
    with pytest.raises(TskFormatError, match="cannot save the model's surgery plan: .*unknown op 'remove_filters'"):
        save(model, tmp_path / "x.tsk")
    assert not (tmp_path / "x.tsk").exists()
