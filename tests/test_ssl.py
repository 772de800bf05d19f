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


def test_proximal_step_is_block_soft_thresholding() -> None:
    """W_g ← W_g·max(0, 1 − step·λ/||W_g||₂) per channel group (Wen et al. Eq. 2's group lasso, proximal form):
    small groups reach exactly zero, the others shrink by step·λ in norm."""
    m = chain()
    with torch.no_grad():
        for t in (m[0].weight, m[0].bias, m[1].weight, m[1].bias):
            t[[2, 5]] *= 0.01
        m[3].weight[:, [2, 5]] *= 0.01
    graph = trace(m, torch.randn(1, 3, 5, 5))
    reg = GroupLasso(m, graph, [graph.group_of("0")], lambda_channel=0.5, proximal=True)
    before = copy.deepcopy(m)
    ref = reference_channel_norms(before)
    step = 0.4  # step·λ = 0.2: groups 2 and 5 (norm ~0.02) go to zero
    reg.prox(step)
    factor = (1 - step * 0.5 / ref).clamp_min(0)
    assert factor[[2, 5]].eq(0).all() and factor.gt(0).sum() == 6
    torch.testing.assert_close(m[0].weight, before[0].weight * factor.reshape(-1, 1, 1, 1))
    torch.testing.assert_close(m[1].bias, before[1].bias * factor)
    torch.testing.assert_close(m[3].weight, before[3].weight * factor.reshape(1, -1, 1, 1))
    torch.testing.assert_close(reference_channel_norms(m), (ref - step * 0.5).clamp_min(0))
    assert reg.loss(None) is None  # proximal: the penalty is not added to the loss as well
    dead = _zero_atoms(m, graph, graph.groups)
    assert sorted(graph.group_of("0").atoms.index(a) for a in dead) == [2, 5]


def test_proximal_step_zeroes_a_residual_block_and_filter_shapes() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", (1, 8, 8), 10).eval()
    graph = trace(model, torch.randn(1, 1, 8, 8))
    reg = GroupLasso(model, graph, [], lambda_channel=0.0, lambda_depth=1.0, blocks=["layer1.1", "layer2.0"],
                     proximal=True)
    shapes = GroupLasso(model, graph, [], lambda_channel=0.0, lambda_shape=0.1, proximal=True)
    norms = reg.depth_norms()
    with torch.no_grad():
        for p in model.layer1[1].parameters():
            p.mul_(0.5 / norms[0])  # norm 0.5 <= step·λ
    conv = model.layer3[0].conv1
    col = conv.weight.pow(2).sum(0, keepdim=True).sqrt()
    want = conv.weight.detach() * (1 - 0.5 * 0.1 / col).clamp_min(0)
    reg.prox(0.5)
    assert all(p.eq(0).all() for p in model.layer1[1].parameters())
    torch.testing.assert_close(reg.depth_norms()[1], norms[1] - 0.5)
    shapes.prox(0.5)
    torch.testing.assert_close(conv.weight, want)


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
    with torch.no_grad():
        scale = 0.2 / float(torch.cat([q.reshape(-1) for q in model.layer3[1].parameters()]).norm())
        for p in model.layer3[1].parameters():
            p.mul_(scale)  # the block's norm is now 0.2
    reg.blocks.append("layer3.1")
    kept = copy.deepcopy(model)
    wide = reg.zero_below(1e-3, epsilon_depth=0.3)  # a block on its way to zero goes too
    assert wide["blocks_removed"] == ["layer1.1", "layer2.0", "layer3.1"]
    assert wide["block_norms"]["layer3.1"] == pytest.approx(0.2, abs=1e-4)
    assert all(p.eq(0).all() for p in model.layer3[1].parameters())
    model = kept  # epsilon alone (0.2 > epsilon): only the blocks that were already zero, removed exactly
    summary = GroupLasso(model, graph, [], lambda_channel=0.0, blocks=list(reg.blocks)).zero_below(1e-3)
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
