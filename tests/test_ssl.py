"""prune.ssl (Wen et al. 2016): the group-lasso penalty against a hand-written reference (the L2
norm with its square root), zeroing under epsilon, exact removal of zeroed channels and blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from rich.console import Console
from torch import nn

from torchshrink.errors import ModelError
from torchshrink.models import build_model
from torchshrink.pipeline import run_recipe
from torchshrink.prune.ssl import GroupLasso, _zero_atoms, depth_blocks
from torchshrink.recipe import load_recipe
from torchshrink.surgery.graph import trace
from torchshrink.surgery.plan import apply_plan
from torchshrink.surgery.prune_channels import RemoveBlock, prune_channels_op


def chain() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.5, 0.5)
    return m.eval()


def reference_channel_norms(m: nn.Module) -> torch.Tensor:
    """||W_g||₂ of each channel of the first conv: its filter and bias, the BN entries, the next conv's kernels."""
    sq = (m[0].weight.pow(2).sum((1, 2, 3)) + m[0].bias.pow(2) + m[1].weight.pow(2) + m[1].bias.pow(2)
          + m[3].weight.pow(2).sum((0, 2, 3)))
    return sq.sqrt()


def test_penalty_is_the_sum_of_l2_norms_with_square_root() -> None:
    m = chain()
    graph = trace(m, torch.randn(1, 3, 5, 5))
    reg = GroupLasso(m, graph, [graph.group_of("0")], lambda_channel=0.1)
    ref = reference_channel_norms(m)
    torch.testing.assert_close(reg.channel_norms(), ref)
    torch.testing.assert_close(reg.penalty(), 0.1 * ref.sum())
    assert not torch.allclose(reg.penalty(), 0.1 * ref.pow(2).sum())  # not the squared norm (the port bug)
    reg.penalty().backward()  # d/dW λ||W_g|| = λ W / ||W_g||
    torch.testing.assert_close(m[0].weight.grad, 0.1 * m[0].weight.detach() / ref.detach().reshape(-1, 1, 1, 1))


def test_shape_groups_and_bad_lambdas() -> None:
    m = chain()
    graph = trace(m, torch.randn(1, 3, 5, 5))
    reg = GroupLasso(m, graph, graph.groups, lambda_channel=0.0, lambda_shape=0.5)
    ref = sum(c.weight.pow(2).sum(0).sqrt().sum() for c in (m[0], m[3]))
    torch.testing.assert_close(reg.penalty(), 0.5 * ref)
    with pytest.raises(ModelError, match="'lambda_channel' parameter of ssl"):
        GroupLasso(m, graph, graph.groups, lambda_channel=-1.0)


def test_groups_under_epsilon_are_zeroed_and_removed_exactly() -> None:
    m = chain()
    with torch.no_grad():
        for t in (m[0].weight, m[0].bias, m[1].weight, m[1].bias):
            t[[1, 4, 6]] *= 1e-6
        m[3].weight[:, [1, 4, 6]] *= 1e-6
    graph = trace(m, torch.randn(1, 3, 5, 5))
    reg = GroupLasso(m, graph, graph.groups, lambda_channel=0.1)
    summary = reg.zero_below(1e-3)
    assert summary["channel_groups_zeroed"] == 3 and summary["channel_groups"] == 14
    dead = _zero_atoms(m, graph, graph.groups)
    assert sorted(graph.group_of("0").atoms.index(a) for a in dead) == [1, 4, 6]
    pruned = apply_plan(m, [prune_channels_op(graph, dead)]).eval()
    assert pruned[0].out_channels == 5 and pruned[3].in_channels == 5
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(pruned(x), m(x), atol=1e-6, rtol=0)


def test_zeroed_residual_block_is_removed_with_its_shortcut_kept() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", (1, 8, 8), 10).eval()
    assert depth_blocks(model, ["layer?.?"], "shortcut") == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    graph = trace(model, torch.randn(1, 1, 8, 8))
    reg = GroupLasso(model, graph, [], lambda_channel=0.0, lambda_depth=1.0, blocks=["layer1.1", "layer2.0"])
    with torch.no_grad():
        for name in ("layer1.1", "layer2.0"):
            for p in model.get_submodule(name).parameters():
                p.mul_(1e-7)
    summary = reg.zero_below(1e-3)
    assert summary["blocks_removed"] == ["layer1.1", "layer2.0"]
    slim = apply_plan(model, [RemoveBlock(block=b, shortcut="shortcut") for b in summary["blocks_removed"]]).eval()
    assert isinstance(slim.layer1[1], nn.Identity) and type(slim.layer2[0]).__name__ == "PadShortcut"
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(slim(x), model(x), atol=1e-6, rtol=0)
    with pytest.raises(ModelError, match="matches no module with a 'shortcut' child"):
        depth_blocks(model, ["fc"], "shortcut")


@pytest.mark.slow
def test_ssl_recipe_runs_and_round_trips(tmp_path) -> None:
    r = load_recipe("wen2016_ssl_resnet20_cifar10", [
        "data.name=digits", "data.limit=100", "baseline.train.epochs=1", "stages.0.train.epochs=1",
        "stages.0.finetune.epochs=1", "stages.0.epsilon=2.5", "measure.latency=false"])
    rep = run_recipe(r, tmp_path / "run", progress=False, console=Console(quiet=True)).report
    stage = rep["structured"]["stages"][0]
    assert rep["size"]["roundtrip_exact"] and stage["ssl"]["channel_groups"] > 0
    assert stage["ssl"]["channel_groups_zeroed"] > 0 and rep["result"]["macs"] < rep["baseline"]["macs"]
    assert copy.deepcopy(stage["channels"])  # per layer channels before -> after
