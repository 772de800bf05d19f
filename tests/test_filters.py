"""prune.filters (Li et al. 2017): scores against a hand-written reference, selection, rounding,
strategies, the recipe round trip (plan stored in the .tsk file and replayed) and errors."""

from __future__ import annotations

import pytest
import torch
from rich.console import Console
from torch import nn

from torchshrink.errors import ModelError
from torchshrink.format import load, read_tsk, save
from torchshrink.models import build_model
from torchshrink.pipeline import run_recipe
from torchshrink.prune.filters import (choose, filter_norms, filter_prune, filter_prune_plan, filter_sensitivity,
                                       kept_count)
from torchshrink.recipe import load_recipe, parse_recipe
from torchshrink.surgery.graph import trace


def chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 4))


def test_scores_equal_the_papers_sum_of_absolute_weights() -> None:
    model = chain()
    graph = trace(model, torch.randn(1, 3, 5, 5))
    g = graph.group_of("0")
    w = model[0].weight.detach()
    torch.testing.assert_close(torch.tensor(filter_norms(model, graph, g, "l1")), w.abs().sum((1, 2, 3)).double())
    torch.testing.assert_close(torch.tensor(filter_norms(model, graph, g, "l2")),
                               w.pow(2).sum((1, 2, 3)).sqrt().double())
    drop = choose(g, filter_norms(model, graph, g), 0.25)
    smallest = torch.argsort(w.abs().sum((1, 2, 3)))[:2].tolist()
    assert sorted(drop) == sorted(g.atoms[i] for i in smallest)


def test_greedy_ignores_kernels_of_removed_inputs() -> None:
    model = chain()
    graph = trace(model, torch.randn(1, 3, 5, 5))
    first, second = graph.group_of("0"), graph.group_of("3")
    removed = set(choose(first, filter_norms(model, graph, first), 0.5))
    keep = [i for i, a in enumerate(first.atoms) if a not in removed]
    w = model[3].weight.detach()
    ref = w[:, keep].abs().sum((1, 2, 3)).double()
    torch.testing.assert_close(torch.tensor(filter_norms(model, graph, second, "l1", removed)), ref)
    indep = filter_prune_plan(model, (3, 5, 5), 0.5, strategy="independent")
    greedy = filter_prune_plan(model, (3, 5, 5), 0.5, strategy="greedy")
    assert indep.channels == greedy.channels == {"0": (8, 4), "3": (6, 3)}


@pytest.mark.parametrize("size, amount, round_to, blocks, kept", [
    (64, 0.3, 1, 1, 45), (64, 0.3, 8, 1, 48), (64, 0.9, 8, 1, 8), (5, 0.5, 8, 1, 5), (16, 0.3, 1, 4, 12),
    (10, 0.99, 1, 1, 1),
])
def test_kept_count_rounding(size: int, amount: float, round_to: int, blocks: int, kept: int) -> None:
    assert kept_count(size, amount, round_to, blocks) == kept


def test_vgg16_paper_layer_set_cuts_macs_and_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("vgg16", (1, 8, 8), 10)
    amount = {"features.conv1": 0.5, "features.conv[89]": 0.5, "features.conv1[0-3]": 0.5}
    pruned = filter_prune(model, (1, 8, 8), amount, layers=["features.*"])
    assert pruned.features.conv1.out_channels == 32 and pruned.features.conv2.in_channels == 32
    assert pruned.features.conv13.out_channels == 256 and pruned.classifier.fc1.in_features == 256
    assert pruned.features.conv7.out_channels == 256 and pruned.features.conv8.out_channels == 256  # 256, 512 before
    from torchshrink.measure import model_summary

    before, after = (model_summary(m, (1, 8, 8))["macs_dense"] for m in (model, pruned))
    assert after < 0.7 * before  # the paper's set removes > 30 % of the MACs here too
    save(pruned, tmp_path / "m.tsk")
    f = read_tsk(tmp_path / "m.tsk")
    assert [op["op"] for op in f.surgery] == ["prune_channels"]
    loaded = load(f, dense=True)
    x = torch.randn(5, 1, 8, 8)
    pruned.eval()
    assert torch.equal(loaded(x), pruned(x))


def test_sensitivity_curves_start_at_the_baseline() -> None:
    from torch.utils.data import TensorDataset

    model = chain().eval()
    x = torch.randn(40, 3, 5, 5)
    data = TensorDataset(x, model(x).argmax(1))
    curves = filter_sensitivity(model, data, (3, 5, 5), [0.0, 0.5], progress=False)
    assert set(curves) == {"0", "3"}
    assert all(c[0]["accuracy"] == 1.0 and c[1]["sparsity"] == 0.5 for c in curves.values())


@pytest.mark.slow
def test_resnet_recipe_prunes_first_convs_and_reports(tmp_path) -> None:
    r = load_recipe("li2017_resnet56_cifar10", [
        "data.name=digits", "data.limit=100", "model.name=resnet20", "baseline.train.epochs=1",
        "stages.0.finetune.epochs=1", "measure.latency=false",
        'stages.0.amount={"layer1.*.conv1": 0.5, "layer2.[1-2].conv1": 0.3}'])
    rep = run_recipe(r, tmp_path / "run", progress=False, console=Console(quiet=True)).report
    assert rep["size"]["roundtrip_exact"]
    assert rep["result"]["macs"] < rep["baseline"]["macs"] and rep["result"]["macs_ratio"] > 1
    channels = rep["structured"]["stages"][0]["channels"]
    assert channels["layer1.0.conv1"] == [16, 8] and channels["layer2.1.conv1"] == [32, 22]
    assert all(k.endswith("conv1") for k in channels)  # the residual streams are left as they were


def test_bad_parameters_name_the_key() -> None:
    model = chain()
    with pytest.raises(ModelError, match="'amount"):
        filter_prune_plan(model, (3, 5, 5), 1.5)
    with pytest.raises(ModelError, match="'norm' parameter"):
        filter_prune_plan(model, (3, 5, 5), 0.5, norm="l3")
    with pytest.raises(ModelError, match="'round_to' parameter"):
        filter_prune_plan(model, (3, 5, 5), 0.5, round_to=0)
    with pytest.raises(ModelError, match="matches no prunable layer"):
        filter_prune_plan(model, (3, 5, 5), 0.5, layers=["conv9"])
    with pytest.raises(ModelError, match="'amount' has the key 'nope'"):
        filter_prune_plan(model, (3, 5, 5), {"nope": 0.5})


def test_recipe_keys_are_checked() -> None:
    base = {"name": "x", "data": {"name": "digits"}, "model": {"name": "lenet5"}}
    with pytest.raises(Exception, match="round_to"):
        parse_recipe({**base, "stages": [{"technique": "filters", "amount": 0.3, "round_to": 0}]})
    with pytest.raises(Exception, match="strategy"):
        parse_recipe({**base, "stages": [{"technique": "filters", "amount": 0.3, "strategy": "random"}]})


def test_cli_sensitivity_filters(tmp_path) -> None:
    import json
    import subprocess
    import sys

    out = tmp_path / "sens"
    run = subprocess.run([sys.executable, "-m", "torchshrink.cli", "sensitivity", "default", "--filters", "--out",
                          str(out), "--sparsities", "0,0.5", "--no-progress", "--set", "baseline.train.epochs=0",
                          "--set", "data.limit=60"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    doc = json.loads((out / "sensitivity.json").read_text())
    assert set(doc["curves"]) == {"fc1", "fc2"}  # fc3 makes the outputs: never pruned
    assert [p["sparsity"] for p in doc["curves"]["fc1"]] == [0.0, 0.5]
    assert doc["curves"]["fc1"][0]["accuracy"] == doc["baseline_accuracy"]
