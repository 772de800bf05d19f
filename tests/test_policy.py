"""Budgeted per-layer policies: the exact knapsack, measured costs, the stage, ``auto``, ranks."""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from policy_worker import table as worker_table
from policy_worker import tiny
from rich.console import Console

from torchshrink.core.transform import clone
from torchshrink.errors import RecipeError
from torchshrink.format import encoded_bytes, save
from torchshrink.pipeline import run_recipe
from torchshrink.policy import Option, Setting, applied, grid, knapsack, profile, uniform
from torchshrink.policy.auto import auto_recipe
from torchshrink.policy.latency import LayerTimer
from torchshrink.quantize import kmeans
from torchshrink.recipe import load_recipe, parse_recipe


# --- search ------------------------------------------------------------------------------
def brute_force(options, budget):
    best = None
    for combo in itertools.product(*options.values()):
        cost, damage = sum(o.cost for o in combo), sum(o.damage for o in combo)
        if cost <= budget and (best is None or damage < best[1] - 1e-12):
            best = (cost, damage)
    return best


@pytest.mark.parametrize("seed", range(8))
def test_knapsack_is_exact_against_brute_force(seed):
    r = random.Random(seed)
    options = {f"l{i}": [Option(k, r.randint(1, 60), r.random()) for k in range(r.randint(1, 5))] for i in range(4)}
    budget = r.randint(40, 200)
    want = brute_force(options, budget)
    if want is None:
        with pytest.raises(RecipeError, match="below the cheapest"):
            knapsack(options, budget, resolution=budget)
        return
    # integer costs and one unit per byte: the DP is exact
    choice, front = knapsack(options, budget, resolution=budget)
    assert choice.cost <= budget
    assert choice.damage == pytest.approx(want[1])
    costs, damages = [c for c, _ in front], [d for _, d in front]
    assert costs == sorted(costs) and damages == sorted(damages, reverse=True)
    assert damages[-1] == pytest.approx(want[1])


def test_knapsack_rounds_costs_up_so_the_budget_holds():
    options = {"a": [Option(0, 3.3, 1.0), Option(1, 6.6, 0.0)], "b": [Option(0, 3.3, 1.0), Option(1, 3.4, 0.5)]}
    choice, _ = knapsack(options, 10.0, resolution=3)  # unit 3.33: 6.6 -> 2 units, 3.4 -> 2 units
    assert choice.cost <= 10.0


def test_uniform_gives_every_layer_the_same_setting():
    options = {n: [Option("x", 5, 0.1), Option("y", 1, 0.9)] for n in "abc"}
    assert {o.key for o in uniform(options, 15).picks.values()} == {"x"}
    assert {o.key for o in uniform(options, 14).picks.values()} == {"y"}
    with pytest.raises(RecipeError, match="no uniform setting"):
        uniform(options, 2)


def test_setting_checks_its_values():
    with pytest.raises(Exception, match="sparsity"):
        Setting(1.5, 4)
    with pytest.raises(Exception, match="bits"):
        Setting(0.5, 0)
    assert grid([0.5, 0.0], [4, 2])[0] == Setting(0.0, 2)


# --- measured costs ---------------------------------------------------------------------
def test_clone_keeps_the_original_working_after_a_bias_transform():
    """A plain deepcopy shares the Parametrized class: a bias transform on the copy broke the original."""
    model, held = tiny()
    from torchshrink.prune.magnitude import prune_layer

    prune_layer(model[1], sparsity=0.5)
    copy = clone(model)
    kmeans(copy, 2, layers=["1"], include_bias=True)
    assert torch.isfinite(model(held.tensors[0])).all()  # the original still has a plain bias
    assert not hasattr(type(model[1]), "bias") or "bias" not in model[1].parametrizations


def test_profile_bytes_are_the_bytes_save_writes(tmp_path):
    model, held = tiny()
    table = profile(model, held, ["1", "3"], grid([0.0, 0.8], [2, None]), (1, 4, 4), include_bias=True,
                    progress=False)
    assert len(table) == 8
    for e in table:
        trial = applied(model, {e.layer: e.setting}, include_bias=True)
        info = save(trial, tmp_path / "t.tsk")
        want = info.tensor_bytes[f"{e.layer}.weight"] + info.tensor_bytes[f"{e.layer}.bias"]
        assert e.bytes == want
        assert e.damage == pytest.approx(e.loss - profile_base_loss(model, held), abs=1e-8)
    # more sparsity or fewer bits never costs more bytes here
    by = {(e.layer, e.sparsity, e.bits): e.bytes for e in table}
    assert by[("1", 0.8, 2)] < by[("1", 0.0, 2)] < by[("1", 0.0, None)]


def test_rank_settings_factorize_first_and_price_both_factors(tmp_path):
    from torchshrink.factorize.svd import LowRankLinear

    model, held = tiny()
    table = profile(model, held, ["1", "3"], grid([0.0, 0.5], [2, None], [0.25, None]), (1, 4, 4),
                    include_bias=True, progress=False)
    assert len(table) == 2 * 2 * 2 * 2
    for e in (e for e in table if e.rank is not None):
        trial = applied(model, {e.layer: e.setting}, include_bias=True)
        layer = trial.get_submodule(e.layer)
        assert isinstance(layer, LowRankLinear) and layer.rank == max(1, round(0.25 * min(model[int(e.layer)].weight.shape)))
        info = save(trial, tmp_path / "t.tsk")
        assert e.bytes == sum(info.tensor_bytes[f"{e.layer}.{p}"] for p in ("first.weight", "second.weight", "second.bias"))
    by = {(e.layer, e.sparsity, e.bits, e.rank): e.bytes for e in table}
    assert by[("1", 0.0, None, 0.25)] < by[("1", 0.0, None, None)]  # 24x16 at rank 4: 160 weights, not 384


def test_a_rank_grid_skips_convolutions():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    _, held = tiny()
    data = torch.utils.data.TensorDataset(held.tensors[0], held.tensors[1] % 3)
    table = profile(model, data, ["0", "2"], grid([0.0], [None], [0.5, None]), (1, 4, 4), progress=False)
    assert [(e.layer, e.rank) for e in table] == [("0", None), ("2", 0.5), ("2", None)]


@pytest.mark.slow
def test_policy_stage_with_ranks_factorizes_the_chosen_layers(tmp_path):
    from torchshrink.format import read_tsk

    stage = {**TINY["stages"][0], "ranks": [0.25], "budget_bytes": 2000, "compare_uniform": False}
    res = run_recipe(parse_recipe({**TINY, "stages": [stage]}), tmp_path, progress=False,
                     console=Console(file=io.StringIO()))
    p, size = res.report["policy"], res.report["size"]
    assert size["file_bytes"] <= 2000 and size["roundtrip_exact"]
    assert {s["rank"] for s in p["chosen"]["settings"].values()} == {0.25}
    surgery = read_tsk(tmp_path / "model.tsk").surgery
    assert sorted(op["layer"] for op in surgery if op["op"] == "low_rank") == sorted(p["chosen"]["settings"])


def profile_base_loss(model, held):
    from torchshrink.train import evaluate

    return evaluate(model, held)["loss"]


def test_encoded_bytes_names_an_unknown_tensor():
    model, _ = tiny()
    with pytest.raises(Exception, match="no tensor 'nope'"):
        encoded_bytes(model, ["nope"])


def test_layer_latency_is_measured_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSHRINK_CACHE", str(tmp_path))
    model, _ = tiny()
    trial = applied(model, {"1": Setting(0.8, 4)})
    t = LayerTimer(model, (1, 4, 4))
    ms = t.time(trial, "1")
    assert ms > 0
    files = list(tmp_path.glob("latency-*.json"))
    assert len(files) == 1
    again = LayerTimer(model, (1, 4, 4))
    assert again.cache == json.loads(files[0].read_text())
    assert again.time(trial, "1") == ms  # from the cache


def test_two_rank_profile_equals_one_rank(tmp_path):
    worker = Path(__file__).with_name("policy_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "table.json").read_text())
    assert doc["world"] == 2
    assert doc["rows"] == worker_table()


# --- the stage and auto --------------------------------------------------------------------
TINY = {
    "name": "tiny_policy",
    "data": {"name": "digits", "limit": 300},
    "model": {"name": "lenet300", "args": {"hidden": [32, 16]}},
    "baseline": {"train": {"epochs": 3, "lr": 0.05, "batch_size": 32}},
    "measure": {"latency": False},
    "stages": [{"technique": "policy", "budget_bytes": 2500, "sparsities": [0.0, 0.5, 0.8], "bits": [2, 4],
                "iterations": 1, "prune_finetune": {"epochs": 1, "lr": 0.01},
                "finetune": {"epochs": 1, "lr": 0.001}}],
}


@pytest.mark.slow
def test_policy_stage_meets_the_budget_and_reports_prediction_and_uniform(tmp_path):
    out = io.StringIO()
    res = run_recipe(parse_recipe(TINY), tmp_path, progress=False, console=Console(file=out, width=200))
    p, size = res.report["policy"], res.report["size"]
    assert "policy: per-layer settings" in out.getvalue() and "file bytes measured" in out.getvalue()
    assert size["file_bytes"] <= 2500
    assert p["chosen"]["measured"]["file_bytes"] == size["file_bytes"]
    assert p["chosen"]["rebits"]["predicted_cost"] == pytest.approx(size["file_bytes"], abs=64)
    assert len(p["table"]) == 3 * 6
    assert p["uniform"]["measured"]["file_bytes"] <= 2500
    assert len({tuple(s.values()) for s in p["uniform"]["settings"].values()}) == 1
    assert p["chosen"]["search"]["predicted_loss"] <= p["uniform"]["search"]["predicted_loss"] + 1e-9
    assert (tmp_path / "policy.png").stat().st_size > 0


def test_policy_budget_below_the_fixed_bytes_is_one_clear_error(tmp_path):
    recipe = parse_recipe({**TINY, "stages": [{**TINY["stages"][0], "budget_bytes": 50}]})
    with pytest.raises(RecipeError, match="does not even cover"):
        run_recipe(recipe, tmp_path, progress=False, console=Console(file=io.StringIO()))


def test_policy_spec_wants_exactly_one_budget():
    with pytest.raises(RecipeError, match="exactly one of budget_bytes"):
        parse_recipe({**TINY, "stages": [{**TINY["stages"][0], "budget_energy_uj": 1.0}]})


def test_auto_turns_deep_compression_into_one_policy_stage():
    r = auto_recipe(load_recipe("deep_compression_lenet300"), {"budget_bytes": 4000})
    (stage,) = r.stages
    assert stage.technique == "policy" and stage.budget_bytes == 4000
    assert stage.prune_finetune.epochs == 90 and stage.iterations == 6
    assert stage.finetune.epochs == 20 and stage.include_bias
    again = auto_recipe(load_recipe("haq_lenet300"), {"budget_energy_uj": 0.02})
    assert again.stages[0].budget_energy_uj == 0.02 and again.stages[0].budget_bytes is None
    with pytest.raises(RecipeError, match="exactly one budget"):
        auto_recipe(r, {"budget_bytes": 1, "budget_latency_ms": 1.0})


def test_auto_cli_without_a_budget_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torchshrink.cli", "auto", "deep_compression_lenet300",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: give exactly one budget: --budget-bytes, "
                                                "--budget-latency-ms, --budget-energy-uj, --budget-macs"]
