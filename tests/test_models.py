"""Tests of the model zoo: shapes, exact parameter counts, names, specs, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from torchshrink.errors import ModelError
from torchshrink.models import (
    PadShortcut,
    build_from_spec,
    build_model,
    list_models,
)
from torchshrink.core.select import select_layers

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
NAMES = ["lenet300", "lenet5", "mlp", "resnet20", "resnet32", "resnet44", "resnet56", "vgg16"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Hand-computed parameter counts (from the papers' architectures, not from the models).
def linear(i: int, o: int) -> int:
    return i * o + o


def conv(i: int, o: int, k: int, bias: bool = True) -> int:
    return i * o * k * k + (o if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def resnet_params(depth: int, in_ch: int, classes: int, shortcut: str = "A") -> int:
    n = (depth - 2) // 6
    total = conv(in_ch, 16, 3, False) + bn(16) + linear(64, classes)
    c_in = 16
    for c in (16, 32, 64):
        for i in range(n):
            cin = c_in if i == 0 else c
            total += conv(cin, c, 3, False) + bn(c) + conv(c, c, 3, False) + bn(c)
            if i == 0 and cin != c and shortcut == "B":
                total += conv(cin, c, 1, False) + bn(c)
        c_in = c
    return total


def vgg16_params(in_ch: int, classes: int) -> int:
    chans = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    total, c_in = 0, in_ch
    for c in chans:
        total += conv(c_in, c, 3, False) + bn(c)
        c_in = c
    return total + linear(512, 512) + bn(512) + linear(512, classes)


def test_list_models() -> None:
    assert list_models() == NAMES


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, shape, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_param_counts_lenets() -> None:
    lenet300 = build_model("lenet300", (1, 28, 28), 10)
    assert n_params(lenet300) == linear(784, 300) + linear(300, 100) + linear(100, 10) == 266_610
    lenet5 = build_model("lenet5", (1, 28, 28), 10)
    expected = conv(1, 20, 5) + conv(20, 50, 5) + linear(4 * 4 * 50, 500) + linear(500, 10)
    assert n_params(lenet5) == expected == 431_080
    # 8x8 digits: padding 2 keeps 8 -> 8 -> 4 -> 4 -> 2, so fc1 takes 2*2*50 inputs.
    small = build_model("lenet5", (1, 8, 8), 10)
    assert n_params(small) == conv(1, 20, 5) + conv(20, 50, 5) + linear(200, 500) + linear(500, 10)


@pytest.mark.parametrize(("depth", "paper_m"), [(20, 0.27), (32, 0.46), (56, 0.85)])
def test_param_counts_resnets(depth: int, paper_m: float) -> None:
    model = build_model(f"resnet{depth}", (3, 32, 32), 10)
    expected = resnet_params(depth, 3, 10)
    assert n_params(model) == expected
    assert round(expected / 1e6, 2) == paper_m  # He et al. 2016, Table 6
    if depth == 20:
        assert expected == 269_722


def test_param_count_vgg16() -> None:
    model = build_model("vgg16", (3, 32, 32), 10)
    assert n_params(model) == vgg16_params(3, 10) == 14_987_722  # Li et al.: 1.5e7


def test_option_a_shortcut_adds_no_parameters() -> None:
    a = build_model("resnet20", (3, 32, 32), 10)
    b = build_model("resnet20", (3, 32, 32), 10, shortcut="B")
    assert n_params(a) == resnet_params(20, 3, 10, "A")
    assert n_params(b) == resnet_params(20, 3, 10, "B")
    projections = conv(16, 32, 1, False) + bn(32) + conv(32, 64, 1, False) + bn(64)
    assert n_params(b) - n_params(a) == projections
    for name, m in a.named_modules():
        if name.endswith("shortcut"):
            assert sum(p.numel() for p in m.parameters()) == 0, name


def test_pad_shortcut_matches_reference() -> None:
    x = torch.randn(2, 16, 7, 7)
    out = PadShortcut(16, 32, 2)(x)
    ref = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 16, 4, 4)], dim=1)
    torch.testing.assert_close(out, ref, atol=0.0, rtol=0.0)


def test_recipe_names_lenets() -> None:
    lenet300 = build_model("lenet_300_100", (1, 28, 28), 10)
    assert [n for n, _ in select_layers(lenet300)] == ["fc1", "fc2", "fc3"]
    lenet5 = build_model("lenet5", (1, 28, 28), 10)
    assert [n for n, _ in select_layers(lenet5)] == ["conv1", "conv2", "fc1", "fc2"]
    assert lenet5.padding == 0 and lenet5.fc1.in_features == 800


def test_recipe_names_resnet() -> None:
    model = build_model("resnet20", (1, 8, 8), 10)
    firsts = [n for n, _ in select_layers(model, "layer*.*.conv1")]
    assert firsts == [f"layer{s}.{i}.conv1" for s in (1, 2, 3) for i in range(3)]
    names = dict(model.named_modules())
    for key in ["conv1", "bn1", "fc", "layer1.0.conv2", "layer3.2.bn1", "layer3.2.bn2"]:
        assert key in names, key
    assert isinstance(names["layer2.0.bn1"], nn.BatchNorm2d)
    b = build_model("resnet20", (1, 8, 8), 10, shortcut="B")
    assert isinstance(dict(b.named_modules())["layer2.0.shortcut.conv"], nn.Conv2d)


def test_recipe_names_vgg16() -> None:
    model = build_model("vgg16", (3, 32, 32), 10)
    convs = select_layers(model, "features.*")
    assert [n for n, _ in convs] == [f"features.conv{i}" for i in range(1, 14)]
    assert all(isinstance(m, nn.Conv2d) for _, m in convs)
    heads = [n for n, _ in select_layers(model, "classifier.*")]
    assert heads == ["classifier.fc1", "classifier.fc2"]
    assert isinstance(model.classifier.bn1, nn.BatchNorm1d)


@pytest.mark.parametrize(("shape", "pools"), [((3, 32, 32), 5), ((1, 28, 28), 4), ((1, 8, 8), 3)])
def test_vgg16_drops_trailing_pools_on_small_inputs(shape: tuple, pools: int) -> None:
    model = build_model("vgg16", shape, 10)
    kept = [n for n, m in model.features.named_children() if isinstance(m, nn.MaxPool2d)]
    assert kept == [f"pool{i}" for i in range(1, pools + 1)]
    assert model.classifier.fc1.in_features == 512


def _call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    order: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, _i, n=n: order.append(n))
        for n, m in model.named_children()
    ]
    model(x)
    for h in hooks:
        h.remove()
    return order


def test_dropout_sits_before_its_layer() -> None:
    model = build_model("lenet300", (1, 8, 8), 10, dropout=0.5)
    assert model.drop1.p == 0.5 and model.drop2.p == 0.5
    order = _call_order(model, torch.randn(2, 1, 8, 8))
    assert order.index("drop1") + 1 == order.index("fc2")
    assert order.index("drop2") + 1 == order.index("fc3")
    # dropout == 0: the modules stay, as identities, so schedules can always rescale them.
    plain = build_model("lenet300", (1, 8, 8), 10).train()
    assert plain.drop1.p == 0.0 and plain.drop2.p == 0.0
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(plain(x), plain.eval()(x), atol=0.0, rtol=0.0)


@pytest.mark.parametrize(
    ("name", "shape", "kwargs"),
    [
        ("lenet_300_100", (1, 8, 8), {"hidden": (64, 32), "dropout": 0.25}),
        ("lenet5", (1, 8, 8), {}),
        ("resnet32", (3, 32, 32), {"shortcut": "B"}),
        ("vgg16", (1, 8, 8), {}),
    ],
)
def test_zoo_spec_rebuilds_identical_architecture(name: str, shape: tuple, kwargs: dict) -> None:
    model = build_model(name, shape, 10, **kwargs)
    spec = json.loads(json.dumps(model.zoo_spec))
    assert spec == model.zoo_spec
    rebuilt = build_from_spec(spec)
    want = {k: v.shape for k, v in model.state_dict().items()}
    got = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert list(got) == list(want) and got == want
    assert rebuilt.zoo_spec == model.zoo_spec


def test_zoo_spec_content() -> None:
    model = build_model("lenet_300_100", (1, 28, 28), 10, hidden=(200, 50))
    assert model.zoo_spec == {
        "name": "lenet300",
        "input_shape": [1, 28, 28],
        "num_classes": 10,
        "kwargs": {"hidden": [200, 50], "dropout": 0.0},
    }


def test_deterministic_under_manual_seed() -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        states.append(build_model("resnet20", (1, 8, 8), 10).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_init() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20", (3, 32, 32), 10)
    w = model.layer3[1].conv1.weight  # 36,864 draws of N(0, 2 / fan_out)
    assert abs(w.std().item() / math.sqrt(2 / (64 * 9)) - 1) < 0.03
    assert abs(w.mean().item()) < 0.005
    assert torch.equal(model.bn1.weight, torch.ones(16))
    assert torch.equal(model.bn1.bias, torch.zeros(16))
    lenet = build_model("lenet300", (1, 28, 28), 10)
    bound = math.sqrt(3 / 784)
    assert lenet.fc1.weight.abs().max().item() <= bound
    assert lenet.fc1.weight.abs().max().item() > 0.99 * bound
    assert torch.equal(lenet.fc1.bias, torch.zeros(300))


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet20", "vgg16"])
def test_fx_traceable(name: str) -> None:
    model = build_model(name, (1, 8, 8), 10).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(traced(x), model(x), atol=0.0, rtol=0.0)


def test_unknown_name_names_the_choices() -> None:
    with pytest.raises(ModelError, match=r"'resnet18'.*lenet_300_100.*resnet56"):
        build_model("resnet18", (3, 32, 32), 10)


def test_unknown_kwarg_names_the_allowed() -> None:
    with pytest.raises(ModelError, match=r"width.*allowed: shortcut"):
        build_model("resnet20", (3, 32, 32), 10, width=2)


def test_vgg16_takes_no_kwargs() -> None:
    with pytest.raises(ModelError, match="allowed: none"):
        build_model("vgg16", (3, 32, 32), 10, dropout=0.5)


@pytest.mark.parametrize(
    ("name", "shape", "kwargs", "match"),
    [
        ("lenet300", (1, 8, 8), {"dropout": 1.0}, "'dropout'.*in \\[0, 1\\)"),
        ("lenet300", (1, 8, 8), {"hidden": (300,)}, "'hidden'.*two positive ints"),
        ("lenet5", (1, 8, 8), {"padding": 3}, "'padding'"),
        ("resnet20", (3, 32, 32), {"shortcut": "C"}, "'shortcut'.*'A', 'B'"),
    ],
)
def test_invalid_kwarg_values(name: str, shape: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        build_model(name, shape, 10, **kwargs)


def test_lenet5_rejects_tiny_inputs() -> None:
    with pytest.raises(ModelError, match="at least 4x4"):
        build_model("lenet5", (1, 3, 3), 10)


def test_lenet5_rejects_input_too_small_for_explicit_padding() -> None:
    with pytest.raises(ModelError, match="padding=0"):
        build_model("lenet5", (1, 8, 8), 10, padding=0)


@pytest.mark.parametrize("shape", [(1, 8), (1, 0, 8), (1.0, 8, 8), "1x8x8"])
def test_bad_input_shape(shape: object) -> None:
    with pytest.raises(ModelError, match="'input_shape'"):
        build_model("lenet300", shape, 10)  # type: ignore[arg-type]


def test_bad_num_classes() -> None:
    with pytest.raises(ModelError, match="'num_classes'"):
        build_model("resnet20", (3, 32, 32), 0)


def test_malformed_spec() -> None:
    with pytest.raises(ModelError, match="exactly the keys"):
        build_from_spec({"name": "lenet5", "input_shape": [1, 8, 8]})
