"""surgery.graph: coupled channels, checked against a masked reference.

The reference for "these channels were removed correctly" is the original model with the
same channels *zeroed* at their producers (filter, bias and norm affine terms set to 0):
every op here maps a zero channel to zero, so removing the channels must give the same
outputs, within float32 rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchshrink.errors import ModelError
from torchshrink.models import build_model
from torchshrink.surgery.graph import trace
from torchshrink.surgery.plan import apply_plan, replay_plan
from torchshrink.surgery.prune_channels import prune_channels_op
from torchshrink.surgery.torchvision_models import torchvision_models as shim_torchvision_models

ATOL = 1e-5


def zeroed(model: nn.Module, graph, removed) -> nn.Module:
    """The masked reference: the removed atoms' producers and per-channel layers output exactly 0."""
    ref = copy.deepcopy(model)
    gone = {graph.root(a) for a in removed}
    with torch.no_grad():
        for u in graph.uses:
            if u.role not in ("out", "channel"):
                continue
            idx = [i for i, lab in enumerate(u.labels) if lab >= 0 and graph.root(int(lab)) in gone]
            layer = ref.get_submodule(u.target)
            for name in ("weight", "bias"):
                t = getattr(layer, name, None)
                if t is not None and idx:
                    t[idx] = 0
    return ref


def prune_every_group(model: nn.Module, x: torch.Tensor, fraction: float = 0.4, mode: str = "auto"):
    graph = trace(model, x, mode=mode)
    removed = []
    for g in graph.groups:
        per = g.size // g.blocks
        k = int(per * fraction)
        for b in range(g.blocks):
            removed += g.atoms[b * per:b * per + k]
    return graph, removed, apply_plan(model, [prune_channels_op(graph, removed)])


def check_equivalent(model: nn.Module, x: torch.Tensor, mode: str = "auto") -> tuple:
    model.eval()
    graph, removed, pruned = prune_every_group(model, x, mode=mode)
    assert removed, "the test model must have something to prune"
    ref = zeroed(model, graph, removed).eval()
    pruned.eval()
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref(x), atol=ATOL, rtol=1e-4)
    return graph, pruned


class Branchy(nn.Module):
    """Residual add, concatenation, grouped + depthwise convs, flatten into linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grp = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.side = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.a(x) + self.b(x) + x)          # all three branches in one group
        y = torch.cat([self.dw(x), self.side(x)], 1)   # concatenation offsets
        y = F.adaptive_avg_pool2d(F.relu(self.grp(y)), 2)
        return self.fc(torch.flatten(y, 1))            # flatten: channel x spatial stride


def test_branchy_groups_and_exact_removal() -> None:
    torch.manual_seed(0)
    model = Branchy()
    graph, pruned = check_equivalent(model, torch.randn(2, 3, 6, 6))
    assert graph.tracer == "fx"
    (group,) = graph.groups  # the grouped conv's balance constraint joins its input's two groups into one
    assert {"stem", "a", "b", "dw", "side"} <= set(group.producers)  # residual add; dw and cat pass channels
    assert group.blocks == 4 and group.size == 16
    assert all(len(m) == 5 for m in group.members[:8])  # stem, a, b, dw, grp share each residual channel
    assert pruned.grp.groups == 4 and pruned.grp.in_channels % 4 == 0
    assert pruned.fc.in_features == pruned.grp.out_channels * 4


class DataDependent(nn.Module):
    """Python control flow on tensor values: symbolic tracing fails, the concrete trace works."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)
        self.scale = nn.Parameter(torch.rand(8, 1, 1) + 0.5)  # a bare parameter indexed by channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > -100:  # on the input: reducing labelled channels would freeze them
            x = F.relu(self.c1(x))
        if x.shape[-1] > 2:
            x = x + F.relu(self.c2(F.pad(x, (1, 1, 1, 1))))
        return self.c3(x * self.scale).mean((2, 3))


def test_concrete_trace_fallback_and_parameter_cut() -> None:
    torch.manual_seed(0)
    model = DataDependent()
    graph, pruned = check_equivalent(model, torch.randn(1, 3, 8, 8))
    assert graph.tracer == "concrete"
    assert any(u.role == "param" and u.target == "scale" for u in graph.uses)
    assert pruned.scale.shape[0] == pruned.c1.out_channels < 8
    with pytest.raises(ModelError, match="torch.fx cannot trace"):
        trace(model, torch.randn(1, 3, 8, 8), mode="fx")


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c1(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        return self.c3(torch.softmax(self.c2(x), dim=1))


def test_unknown_ops_leave_channels_alone_with_a_note() -> None:
    torch.manual_seed(0)
    graph = trace(Shuffle(), torch.randn(1, 3, 4, 4))
    assert graph.groups == []  # c1 frozen by the shuffle, c2 by the softmax over channels, c3 by the output
    assert any("channel shuffle" in n for n in graph.warnings)
    assert any("softmax" in n for n in graph.warnings)


@pytest.mark.parametrize("name", ["resnet20"])
def test_zoo_models_prune_exactly_and_replay(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, (1, 8, 8), 10)
    graph, pruned = check_equivalent(model, torch.randn(2, 1, 8, 8))
    fresh = replay_plan(build_model(name, (1, 8, 8), 10), pruned.surgery)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}


@pytest.mark.slow
def test_torchvision_mobilenet_v3_prunes_exactly() -> None:
    """Squeeze-excitation (a multiply by a per-channel scale), hardswish, depthwise convs, residual adds."""
    models = torchvision_models()
    torch.manual_seed(0)
    graph, pruned = check_equivalent(models.mobilenet_v3_small(weights=None, num_classes=7), torch.randn(1, 3, 32, 32))
    assert len(graph.groups) > 20 and not graph.warnings


def torchvision_models():
    models = shim_torchvision_models()
    if models is None:
        pytest.skip("torchvision is not installed (dev extra)")
    return models


def test_parametrized_models_are_refused() -> None:
    from torchshrink.prune import magnitude

    model = magnitude(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), sparsity=0.5)
    with pytest.raises(ModelError, match="bake the model first"):
        trace(model, torch.randn(1, 4))
