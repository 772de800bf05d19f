"""The ``amc`` stage (policy/channels.py): the MAC model, the greedy search, the recipe."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console
from torch import nn

from torchshrink.errors import RecipeError
from torchshrink.format import load, read_tsk
from torchshrink.measure import model_summary
from torchshrink.models import build_model
from torchshrink.pipeline import run_recipe
from torchshrink.policy.channels import (
    AMCSpec,
    Groups,
    MacModel,
    greedy,
    searched_groups,
)
from torchshrink.prune.filters import checked_apply
from torchshrink.recipe import load_recipe, parse_recipe


class Mixed(nn.Module):
    """A residual add, a depthwise conv, a grouped conv and a flatten into a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.wide = nn.Conv2d(8, 12, 1)
        self.grouped = nn.Conv2d(12, 12, 3, padding=1, groups=2)
        self.fc = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.a(h))
        h = torch.relu(self.bn(self.dw(h)))
        h = self.grouped(torch.relu(self.wide(h)))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))


def spec(**kw) -> AMCSpec:
    return AMCSpec(technique="amc", budget_macs=0.5, **kw)


@pytest.mark.parametrize("model, shape", [(Mixed(), (3, 8, 8)), (build_model("vgg16", (1, 8, 8), 10), (1, 8, 8)),
                                          (build_model("resnet20", (1, 8, 8), 10), (1, 8, 8))])
def test_predicted_macs_equal_the_pruned_models_macs(model, shape) -> None:
    torch.manual_seed(0)
    gs = searched_groups(model, shape, spec())
    macs = MacModel.of(model, gs.graph, shape)
    assert macs.total == model_summary(model, shape)["macs_dense"]
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        fractions = [float(f) for f in torch.rand(len(gs.groups), generator=gen) * 0.7]
        pruned = checked_apply(model, gs.op(fractions), shape)
        assert macs.macs(gs.removed(fractions)) == pytest.approx(model_summary(pruned, shape)["macs_dense"], rel=1e-9)


def fake_table(gs: Groups, damages: dict[int, list[float]], grid: list[float]) -> dict:
    return {o: [{"fraction": f, "damage": damages.get(k, [0.0] * len(grid))[i], "loss": 0.0, "accuracy": 1.0}
                for i, f in enumerate(grid)] for k, o in enumerate(gs.owners)}


def test_greedy_prunes_the_insensitive_group_first_and_meets_the_budget() -> None:
    model = build_model("vgg16", (1, 8, 8), 10)
    gs = searched_groups(model, (1, 8, 8), spec())
    macs = MacModel.of(model, gs.graph, (1, 8, 8))
    grid = [0.0, 0.25, 0.5, 0.75]
    sensitive = {k: [0.0, 1.0, 2.0, 3.0] for k in range(len(gs.groups)) if k != 5}
    table = fake_table(gs, sensitive, grid)
    limit = 0.9 * macs.total
    s = greedy(gs, table, macs, 0.1, lambda fr, cost: (cost <= limit, None))
    assert s.macs <= limit and s.macs == pytest.approx(macs.macs(gs.removed(s.fractions)))
    assert s.fractions[5] > 0  # the free group moves first
    assert all(p["macs"] >= q["macs"] for p, q in zip(s.path, s.path[1:]))  # every step saves MACs
    assert s.predicted_loss == pytest.approx(0.1 + sum(sensitive.get(k, [0.0] * 4)[grid.index(f)]
                                                       for k, f in enumerate(s.fractions)))


def test_an_unreachable_budget_is_one_clear_error() -> None:
    model = build_model("vgg16", (1, 8, 8), 10)
    gs = searched_groups(model, (1, 8, 8), spec())
    macs = MacModel.of(model, gs.graph, (1, 8, 8))
    table = fake_table(gs, {}, [0.0, 0.5])
    with pytest.raises(RecipeError, match="the budget cannot be met"):
        greedy(gs, table, macs, 0.0, lambda fr, cost: (cost <= 0.01 * macs.total, None))


def test_spec_wants_exactly_one_budget() -> None:
    base = {"name": "t", "data": {"name": "digits"}, "model": {"name": "lenet5"}}
    with pytest.raises(RecipeError, match="exactly one of budget_macs"):
        parse_recipe({**base, "stages": [{"technique": "amc"}]})
    with pytest.raises(RecipeError, match="exactly one of budget_macs"):
        parse_recipe({**base, "stages": [{"technique": "amc", "budget_macs": 0.5, "budget_latency_ms": 1.0}]})
    with pytest.raises(RecipeError, match="budget_macs"):
        parse_recipe({**base, "stages": [{"technique": "amc", "budget_macs": 1.5}]})


@pytest.mark.slow
def test_amc_recipe_meets_the_budget_saves_a_slim_file_and_compares_uniform(tmp_path) -> None:
    r = load_recipe("amc_vgg16_cifar10", [
        "data.name=digits", "data.limit=200", "baseline.train.epochs=1",
        "stages.0.finetune.epochs=1", "stages.0.fractions=[0, 0.25, 0.5]", "measure.latency=false"])
    out = io.StringIO()
    rep = run_recipe(r, tmp_path / "run", progress=False, console=Console(file=out, width=200)).report
    a = rep["amc"]
    assert "amc: channel fractions" in out.getvalue() and "test accuracy" in out.getvalue()  # its own table
    assert a["chosen"]["measured"]["macs"] == pytest.approx(a["chosen"]["predicted_macs"])
    assert a["chosen"]["measured"]["macs"] <= a["budget"] and a["uniform"]["measured"]["macs"] <= a["budget"]
    assert rep["result"]["macs"] == a["chosen"]["measured"]["macs"]
    assert len(set(a["uniform"]["fractions"].values())) == 1
    assert set(a["table"]) == set(a["chosen"]["fractions"])
    f = read_tsk(tmp_path / "run" / "model.tsk")
    assert [op["op"] for op in f.surgery] == ["prune_channels"]
    assert model_summary(load(f, dense=True), (1, 8, 8))["macs_dense"] == a["chosen"]["measured"]["macs"]
    assert (tmp_path / "run" / "amc.png").stat().st_size > 0


def test_latency_budget_is_measured_on_the_pruned_models(tmp_path) -> None:
    r = load_recipe("amc_vgg16_cifar10", [
        "data.name=digits", "data.limit=100", "baseline.train.epochs=1",
        "stages.0.finetune.epochs=0", "stages.0.fractions=[0, 0.5]", "stages.0.budget_macs=null",
        "stages.0.budget_latency_ms=1000", "stages.0.compare_uniform=false", "measure.latency=false"])
    rep = run_recipe(r, tmp_path / "run", progress=False, console=Console(file=io.StringIO())).report
    a = rep["amc"]
    assert a["metric"] == "latency_ms" and len(a["path"]) == 1 and a["path"][0]["latency_ms"] > 0
    assert a["chosen"]["predicted_latency_ms"] <= 1000  # a generous budget: met with nothing pruned


def test_auto_turns_a_filter_recipe_into_one_amc_stage() -> None:
    from torchshrink.policy.auto import auto_recipe

    li = load_recipe("li2017_vgg16_cifar10")
    r = auto_recipe(li, {"budget_macs": 0.4})
    (stage,) = r.stages
    assert stage.technique == "amc" and stage.budget_macs == 0.4 and stage.layers == ["features.*"]
    assert stage.finetune == li.stages[0].finetune and stage.norm == "l1"
    assert auto_recipe(li, {"budget_latency_ms": 3.0}).stages[0].technique == "amc"
    assert auto_recipe(load_recipe("deep_compression_lenet300"), {"budget_latency_ms": 3.0}).stages[0].technique == "policy"
    again = auto_recipe(load_recipe("amc_vgg16_cifar10"), {"budget_latency_ms": 2.0}).stages[0]
    assert again.budget_macs is None and again.budget_latency_ms == 2.0
    with pytest.raises(RecipeError, match="give exactly one budget"):
        auto_recipe(li, {"budget_macs": 0.4, "budget_bytes": 1000})


def test_auto_cli_refuses_a_mac_fraction_above_one(tmp_path) -> None:
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "torchshrink.cli", "auto", "li2017_vgg16_cifar10", "--budget-macs", "1.5",
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert res.returncode == 2 and "budget-macs" in res.stderr and "Traceback" not in res.stderr
