"""Tensor-Train layers (Novikov et al. 2015): TT-SVD, contraction, the tt form, the runtime, the stage."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from torchshrink.errors import ModelError, RecipeError, TskFormatError
from torchshrink.factorize.tt import (
    TTLinear, TTMatrix, tt_contract, tt_factorize, tt_flops, tt_layer_rows, tt_merge, tt_modes, tt_params, tt_plan,
    tt_svd, tt_to_dense,
)
from torchshrink.format import load, read_tsk, save
from torchshrink.forms import FORMS, unpack
from torchshrink.pipeline import run_recipe
from torchshrink.recipe import load_recipe
from torchshrink.runtime.tt import TTKernel, reference_tt_matmul


def _cores(om, im, rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    ranks = [1] + [rank] * (len(om) - 1) + [1]
    return [torch.randn(ranks[k], om[k], im[k], ranks[k + 1], generator=g) for k in range(len(om))]


def test_tt_to_dense_matches_the_definition_entry_by_entry():
    cores = _cores([2, 3], [4, 2], 3)
    w = tt_to_dense(cores)
    for i1, i2, j1, j2 in [(0, 0, 0, 0), (1, 2, 3, 1), (0, 1, 2, 0)]:
        ref = cores[0][0, i1, j1, :] @ cores[1][:, i2, j2, 0]
        assert torch.allclose(w[i1 * 3 + i2, j1 * 2 + j2], ref, atol=1e-6)


@pytest.mark.parametrize("om,im,rank", [([4, 2, 3], [2, 5, 2], 3), ([8], [6], 1), ([2, 2, 2, 2], [3, 1, 2, 2], 2)])
def test_contraction_equals_the_rebuilt_weight(om, im, rank):
    cores = _cores(om, im, rank)
    x = torch.randn(7, math.prod(im))
    assert torch.allclose(tt_contract(x, cores), x @ tt_to_dense(cores).T, rtol=1e-5, atol=1e-5)


def test_full_rank_tt_svd_reproduces_the_weight_and_tol_bounds_the_error():
    w = torch.randn(24, 30)
    cores = tt_svd(w, [2, 3, 4], [3, 2, 5], rank=1000)
    assert torch.allclose(tt_to_dense(cores), w, atol=1e-5)
    for tol in (0.3, 0.7):
        approx = tt_svd(w, [2, 3, 4], [3, 2, 5], tol=tol)
        assert float((tt_to_dense(approx) - w).norm() / w.norm()) <= tol
    assert tt_params(tt_svd(w, [2, 3, 4], [3, 2, 5], tol=0.7)) < tt_params(cores)


def test_max_rank_caps_every_core():
    cores = tt_svd(torch.randn(64, 64), [4, 4, 4], [4, 4, 4], rank=5)
    assert max(c.shape[-1] for c in cores) == 5 and cores[0].shape[0] == cores[-1].shape[-1] == 1


def test_default_modes_are_balanced_factorizations():
    assert tt_modes(1024, 4) == [8, 8, 4, 4]
    assert tt_modes(300, 3) == [10, 6, 5]
    assert tt_modes(7, 2) == [7, 1]
    assert math.prod(tt_modes(784, 4)) == 784


def test_tt_linear_from_dense_and_random_train():
    lin = nn.Linear(36, 24)
    tt = TTLinear.from_dense(lin, [2, 3, 4], [3, 3, 4], rank=1000)
    x = torch.randn(5, 36)
    assert torch.allclose(tt(x), lin(x), atol=1e-5)
    fresh = TTLinear.random(36, 24, rank=2, generator=torch.Generator().manual_seed(0))
    fresh(x).square().sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in fresh.cores)
    assert torch.allclose(fresh(x).detach(), x @ fresh.dense_weight().detach().T + fresh.bias.detach(), atol=1e-5)


def test_transform_forward_equals_unpack_of_pack_bit_for_bit():
    t = TTMatrix(_cores([4, 6], [5, 4], 3), (24, 20))
    with torch.no_grad():  # evaluation / saving: the exact float64 path that the form's decode runs
        w = t(torch.zeros(24, 20))
    assert np.array_equal(unpack(t.pack(torch.zeros(24, 20))), w.numpy())
    assert torch.allclose(t(torch.zeros(24, 20)), w, rtol=1e-5, atol=1e-5)  # training steps: float32
    conv = TTMatrix(_cores([4, 2], [3, 9], 2), (8, 3, 3, 3))
    assert conv(torch.zeros(8, 3, 3, 3)).shape == (8, 3, 3, 3)


def _tt_mlp(rank=3):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    return tt_factorize(model, {"0": rank, "2": 2}, cores=2)


def test_save_stores_cores_and_load_is_exact(tmp_path):
    model = _tt_mlp()
    info = save(model, tmp_path / "m.tsk")
    f = read_tsk(tmp_path / "m.tsk")
    assert f.record("0.weight")["form"] == "tt" and f.record("2.weight")["form"] == "tt"
    assert f.nbytes("0.weight") == 4 * tt_params(model[0].parametrizations.weight[0].cores)
    plain = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    dense = load(tmp_path / "m.tsk", model=plain, dense=True)
    x = torch.randn(9, 32)
    with torch.no_grad():
        assert torch.equal(dense(x), model(x))
        fast = load(tmp_path / "m.tsk", model=nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)))
        assert isinstance(fast[0].weight_, TTKernel)
        assert torch.allclose(fast(x), model(x), atol=1e-5)
    assert info.file_bytes < 4 * (32 * 64 + 64 * 10)


def test_bias_as_a_tt_vector_round_trips_and_counts_in_the_ratio(tmp_path):
    torch.manual_seed(0)
    model = tt_factorize(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)), {"0": 3}, cores=2, bias=True)
    cores = model[0].parametrizations.bias[0].cores
    assert [tuple(c.shape) for c in cores] == [(1, 8, 1, 3), (3, 8, 1, 1)]
    row = tt_layer_rows(model)[0]
    assert row["bias_params"] == 64 and row["bias_tt_params"] == tt_params(cores) == 48
    assert row["ratio_with_bias"] == (64 * 32 + 64) / (row["tt_params"] + 48)
    save(model, tmp_path / "b.tsk")
    f = read_tsk(tmp_path / "b.tsk")
    assert f.record("0.bias")["form"] == "tt" and f.nbytes("0.bias") == 4 * 48
    x = torch.randn(5, 32)
    with torch.no_grad():
        dense = load(tmp_path / "b.tsk", model=nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)), dense=True)
        assert torch.equal(dense(x), model(x))
        fast = load(tmp_path / "b.tsk", model=nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)))
        assert torch.allclose(fast(x), model(x), atol=1e-5)


def test_conv_layer_runs_by_its_reshaped_kernel(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
    tt_factorize(model, 4, modes={"0": {"out": [4, 2], "in": [4, 9]}})
    save(model, tmp_path / "c.tsk")
    fast = load(tmp_path / "c.tsk", model=nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU()))
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-5)


def test_kernel_matches_the_reference_for_every_grouping():
    cores = _cores([4, 4, 2], [2, 4, 4], 3)
    bias = torch.randn(32)
    for groups in (None, [1, 1, 1], [1, 2], [2, 1], [3]):
        k = TTKernel([c.numpy() for c in cores], groups=groups)
        for batch in (1, 5):
            x = torch.randn(batch, 32)
            assert torch.allclose(k.matmul(x, bias), reference_tt_matmul(x, k, bias), rtol=1e-5, atol=1e-5)
        # the kernel keeps the (merged) cores only, never a rebuilt out x in weight
        assert all(c.numel() < 32 * 32 for c in k.merged) or groups == [3]
        assert not [v for v in vars(k).values() if isinstance(v, torch.Tensor) and v.shape == (32, 32)]


def test_merged_cores_are_the_same_tt_matrix():
    cores = _cores([2, 3, 2, 2], [3, 2, 2, 1], 3)
    merged = tt_merge(cores, [2, 2])
    assert [tuple(c.shape) for c in merged] == [(1, 6, 6, 3), (3, 4, 2, 1)]
    assert torch.allclose(tt_to_dense(merged), tt_to_dense(cores), atol=1e-5)
    with pytest.raises(ModelError, match="groups"):
        tt_merge(cores, [2, 1])


def _brute_force_plan(om, im, ranks):
    d, best = len(om), None
    for mask in range(1 << (d - 1)):
        bounds = [0, *[k + 1 for k in range(d - 1) if mask >> k & 1], d]
        if d > 1 and len(bounds) == 2:
            continue
        gm = [math.prod(om[a:b]) for a, b in zip(bounds, bounds[1:])]
        gn = [math.prod(im[a:b]) for a, b in zip(bounds, bounds[1:])]
        cost = sum(math.prod(gn[:k]) * ranks[bounds[k]] * gm[k] * gn[k] * ranks[bounds[k + 1]] * math.prod(gm[k + 1:])
                   for k in range(len(gm)))
        best = min(best or (cost, len(gm)), (cost, len(gm)))
    return best


@pytest.mark.parametrize("modes,rank", [([8, 8, 8, 8], 8), ([8, 8, 8, 8], 4), ([8, 8, 8, 8], 16), ([4, 2, 3], 2)])
def test_plan_has_the_fewest_multiply_adds(modes, rank):
    d = len(modes)
    ranks = [1] + [rank] * (d - 1) + [1]
    groups = tt_plan(modes, modes, ranks)
    bounds = [0] + [sum(groups[:i + 1]) for i in range(len(groups))]
    gm = [math.prod(modes[a:b]) for a, b in zip(bounds, bounds[1:])]
    assert (tt_flops(gm, gm, [ranks[a] for a in bounds]), len(groups)) == _brute_force_plan(modes, modes, ranks)
    if (modes, rank) == ([8, 8, 8, 8], 8):
        assert groups == [2, 2]  # 268M multiply-adds at batch 64 against 302M core by core, 1074M dense
        assert tt_flops(gm, gm, [ranks[a] for a in bounds], 64) == 268435456
        assert tt_flops(modes, modes, ranks, 64) == 301989888


def test_loaded_layer_runs_either_path_alike(tmp_path):
    from torchshrink.runtime.dispatch import force

    model = _tt_mlp()
    save(model, tmp_path / "m.tsk")
    fast = load(tmp_path / "m.tsk", model=nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)))
    x = torch.randn(64, 32)
    with torch.no_grad():
        want = model(x)
        for path in ("kernel", "dense"):
            assert torch.allclose(force(fast, path)(x), want, atol=1e-5), path


def test_bad_parameters_name_the_problem():
    with pytest.raises(ModelError, match="rank"):
        tt_factorize(_plain(), 0)
    with pytest.raises(ModelError, match="'0'.*multiply"):
        tt_factorize(_plain(), 2, modes={"0": {"out": [4, 4], "in": [4, 4]}})
    with pytest.raises(ModelError, match="init"):
        tt_factorize(_plain(), 2, init="zeros")
    with pytest.raises(ModelError, match="tol"):
        tt_svd(torch.randn(4, 4), [2, 2], [2, 2], rank=2, tol=0.1)


def _plain():
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def test_malformed_packed_value_is_refused():
    cores = [c.numpy() for c in _cores([4, 6], [5, 4], 3)]
    with pytest.raises(TskFormatError, match="chain"):
        FORMS["tt"].unpack({"form": "tt", "shape": [24, 20], "cores": [cores[0], cores[0]]})
    with pytest.raises(TskFormatError, match="24 x 20"):
        FORMS["tt"].unpack({"form": "tt", "shape": [24, 21], "cores": cores})


def test_recipe_key_errors_name_the_key():
    with pytest.raises(RecipeError, match="rnak"):
        load_recipe("novikov2015_tt", ["stages.0.rnak=3"])
    with pytest.raises(RecipeError, match="init"):
        load_recipe("novikov2015_tt", ["stages.0.init=zeros"])


def test_recipe_runs_on_digits_with_a_rank_sweep(tmp_path):
    sets = ["baseline.train.epochs=2", "stages.0.finetune.epochs=1", "stages.0.sweep=[1, 2]",
            "model.args.hidden=[64, 64]", "stages.0.rank={fc1: 2, fc2: 2}"]
    res = run_recipe(load_recipe("novikov2015_tt", sets), tmp_path, progress=False, console=Console(file=io.StringIO()))
    rep = res.report
    assert rep["size"]["roundtrip_exact"] is True
    assert [r["rank"] for r in rep["tt_ranks"]] == [1, 2]
    assert rep["tt_ranks"][0]["tt_params"] < rep["tt_ranks"][1]["tt_params"]
    assert {r["layer"] for r in rep["tt_layers"]} == {"fc1", "fc2"}
    assert all(r["dense_params"] / r["tt_params"] == r["ratio"] > 1 for r in rep["tt_layers"])
    assert (tmp_path / "tt_ranks.png").stat().st_size > 0
    assert read_tsk(tmp_path / "model.tsk").record("fc2.weight")["form"] == "tt"
