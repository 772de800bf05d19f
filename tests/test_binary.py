"""Binary weights (BinaryConnect, BWN, LAB): exact storage, gradients, LAB's closed form, kernels, comparison."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from torchshrink.core.transform import find, original
from torchshrink.errors import ModelError, RecipeError
from torchshrink.format import load, read_tsk, save
from torchshrink.forms import FORMS
from torchshrink.pipeline import run_recipe
from torchshrink.quantize.binary import LAB, BinaryWeights, ClipLatent, binarize, glorot_scale, lab_alpha
from torchshrink.recipe import load_recipe, parse_recipe
from torchshrink.runtime import BinaryKernel, binary_matmul, reference_binary_matmul
from torchshrink.runtime import _lut_kernels as kern
from torchshrink.runtime.binary import BinaryWeightConv2d, BinaryWeightLinear
from torchshrink.runtime.dispatch import force
from torchshrink.train import TrainConfig, fit

ATOL, RTOL = 1e-4, 1e-4


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 5))


@pytest.mark.parametrize("method", ["connect", "bwn", "lab"])
def test_forward_is_plus_minus_alpha_and_equals_unpack_of_pack(method: str) -> None:
    model = binarize(mlp(), method)
    for layer in (model[0], model[2]):
        t = find(layer, BinaryWeights)
        w, latent = layer.weight.detach(), original(layer).detach()
        packed = t.pack(latent)
        assert np.array_equal(FORMS["binary"].unpack(packed), w.numpy())
        assert np.array_equal(packed["positive"].astype(bool), (latent >= 0).numpy())
        if method == "bwn":  # α per output channel = mean |w| (Rastegari et al. Eq. 6), rounded to fp16
            expect = latent.abs().mean(1).half().float()
            torch.testing.assert_close(torch.from_numpy(packed["alpha"]), expect, rtol=0, atol=0)
            torch.testing.assert_close(expect, latent.abs().mean(1), rtol=2**-11, atol=0)
            assert torch.equal(w.abs().amax(1), w.abs().amin(1))
        else:
            assert packed["alpha"].size == 1 and len(torch.unique(w.abs())) == 1
        if method == "connect":
            assert float(t.alpha) == pytest.approx(glorot_scale(latent))


@pytest.mark.parametrize("method", ["connect", "lab"])
def test_straight_through_gradient_reaches_the_latent_weight(method: str) -> None:
    layer = binarize(mlp(), method)[0]
    x = torch.randn(6, 12)
    g = torch.randn(6, 20)
    w_eff = layer.weight  # the gradient w.r.t. the effective weight, computed on a plain copy
    plain = w_eff.detach().clone().requires_grad_(True)
    (F.linear(x, plain) * g).sum().backward()
    (F.linear(x, w_eff) * g).sum().backward()
    torch.testing.assert_close(original(layer).grad, plain.grad)


def test_bwn_latent_gradient_is_ste_masked_outside_unit_interval_plus_the_alpha_term() -> None:
    torch.manual_seed(0)
    w = (torch.randn(3, 4) * 0.8).double().requires_grad_(True)
    t = BinaryWeights("bwn", 1.0).double()
    g = torch.randn(3, 4, dtype=torch.float64)
    (t(w) * g).sum().backward()
    wd = w.detach()
    b = torch.where(wd >= 0, 1.0, -1.0).double()
    alpha = wd.abs().mean(1, keepdim=True).half().double()
    # d/dw [α(w)·b] : α·g·1{|w|<=1} (straight-through) + sign(w)/n · Σ_k g_k b_k (through α = mean|w|)
    expect = alpha * g * (wd.abs() <= 1) + b / 4 * (g * b).sum(1, keepdim=True)
    torch.testing.assert_close(w.grad, expect)


def test_lab_alpha_is_the_closed_form_minimizer_of_the_d_weighted_error() -> None:
    torch.manual_seed(0)
    w, v = torch.randn(50), torch.rand(50) * 1e-3
    alpha = float(lab_alpha(w, v, step=10.0, beta2=0.999))
    d = (v / (1 - 0.999**10)).sqrt() + 1e-8
    b = torch.where(w >= 0, 1.0, -1.0)

    def err(a: float) -> float:
        return float((d * (w - a * b) ** 2).sum())

    grid = np.linspace(0.0, 2.0 * float(w.abs().max()), 4001)
    best = grid[int(np.argmin([err(a) for a in grid]))]
    assert alpha == pytest.approx(float((d * w.abs()).sum() / d.sum()), rel=1e-6)
    assert abs(alpha - best) <= grid[1] - grid[0]


def test_lab_callback_sets_alpha_from_adams_second_moments_after_each_step() -> None:
    torch.manual_seed(0)
    model = binarize(mlp(), "lab")
    x, y = torch.randn(64, 12), torch.randint(0, 5, (64,))
    data = torch.utils.data.TensorDataset(x, y)
    cfg = TrainConfig(epochs=2, batch_size=16, optimizer="adam", lr=1e-3, schedule="constant")
    lab = LAB()
    opt_holder = {}

    class Grab(LAB):
        def on_step_end(self, ctx) -> None:
            opt_holder["opt"] = ctx.optimizer

    fit(model, data, cfg, callbacks=[Grab(), lab], progress=False)
    opt = opt_holder["opt"]
    for layer in (model[0], model[2]):
        w = original(layer).detach()
        state = opt.state[original(layer)]
        d = (state["exp_avg_sq"] / (1 - 0.999 ** float(state["step"]))).sqrt() + 1e-8
        expect = (d * w.abs()).sum() / d.sum()
        assert float(find(layer, BinaryWeights).alpha) == pytest.approx(float(expect), rel=1e-5)
        assert float(find(layer, BinaryWeights).alpha) != pytest.approx(float(w.abs().mean()), rel=1e-4)


def test_lab_refuses_an_optimizer_without_second_moments() -> None:
    with pytest.raises(RecipeError, match="needs finetune.optimizer: adam"):
        run_recipe(parse_recipe({"name": "x", "baseline": {"train": {"epochs": 0}},
                                 "stages": [{"technique": "binary", "method": "lab", "finetune": {"epochs": 1}}]}),
                   "/tmp/never-written", progress=False, console=Console(file=io.StringIO()))


def test_binaryconnect_clips_latents_and_stochastic_sampling_only_while_training() -> None:
    torch.manual_seed(0)
    model = binarize(mlp(), "connect", stochastic=True)
    data = torch.utils.data.TensorDataset(torch.randn(64, 12) * 5, torch.randint(0, 5, (64,)))
    fit(model, data, TrainConfig(epochs=2, batch_size=16, lr=0.5, schedule="constant"), callbacks=[ClipLatent()],
        progress=False)
    for layer in (model[0], model[2]):
        h = float(find(layer, BinaryWeights).alpha)
        assert float(original(layer).detach().abs().max()) <= h * (1 + 1e-6)
    layer = model[0]
    model.train()
    draws = {tuple(layer.weight.flatten().tolist()) for _ in range(5)}
    assert len(draws) > 1  # sampled with p = hard_sigmoid(w / H)
    model.eval()
    with torch.no_grad():
        latent = original(layer)
        assert torch.equal(layer.weight, torch.from_numpy(FORMS["binary"].unpack(find(layer, BinaryWeights).pack(latent))))


@pytest.mark.parametrize("shape", [(5, 9), (37, 53), (64, 128), (130, 70)])
@pytest.mark.parametrize("batch", [1, 3, 65])
@pytest.mark.parametrize("per_channel", [True, False])
def test_kernel_matches_its_reference_twin(shape: tuple[int, int], batch: int, per_channel: bool) -> None:
    g = np.random.default_rng(shape[0] + batch)
    alpha = (g.random(shape[0] if per_channel else 1) + 0.1).astype(np.float32)
    positive = g.integers(0, 2, shape).astype(np.uint8)
    w = BinaryKernel.from_signs(positive, alpha)
    assert np.array_equal(w.signs(), positive)
    x, bias = torch.randn(batch, shape[1]), torch.randn(shape[0])
    torch.testing.assert_close(binary_matmul(x, w, bias), reference_binary_matmul(x, w, bias), atol=ATOL, rtol=RTOL)


def test_kernel_refuses_bad_input_with_a_clear_error() -> None:
    w = BinaryKernel.from_signs(np.zeros((4, 6), np.uint8), [1.0])
    with pytest.raises(ModelError, match="last dimension must be 6"):
        binary_matmul(torch.randn(2, 7), w)
    with pytest.raises(ModelError, match="alpha must hold 1 or 4"):
        BinaryKernel.from_signs(np.zeros((4, 6), np.uint8), [1.0, 2.0])


def test_file_is_one_bit_per_weight_and_runs_exactly(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 256), nn.ReLU(), nn.Linear(256, 200))
    binarize(model, "bwn", layers=["2"])
    save(model, tmp_path / "b.tsk")
    f = read_tsk(tmp_path / "b.tsk")
    assert f.record("2.weight")["form"] == "binary"
    assert f.nbytes("2.weight") == math.ceil(256 * 200 / 8) + 2 * 200  # 1 bit per weight + fp16 α per channel
    assert np.array_equal(f.array("2.weight"), model[2].weight.detach().numpy())
    skeleton = lambda: nn.Sequential(nn.Linear(30, 256), nn.ReLU(), nn.Linear(256, 200))  # noqa: E731
    fast, plain = force(load(f, model=skeleton()), "kernel"), load(f, model=skeleton(), dense=True)
    assert isinstance(fast[2], BinaryWeightLinear)
    x = torch.randn(5, 30)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=ATOL, rtol=RTOL)


def test_conv_runtime_module(tmp_path) -> None:
    torch.manual_seed(0)

    def net() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 128, 3, padding=1))

    save(binarize(net(), "connect"), tmp_path / "c.tsk")
    fast = force(load(tmp_path / "c.tsk", model=net()), "kernel")
    plain = load(tmp_path / "c.tsk", model=net(), dense=True)
    assert isinstance(fast[2], BinaryWeightConv2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=ATOL, rtol=RTOL)


def test_bad_parameters_name_the_key() -> None:
    with pytest.raises(ModelError, match="'method' parameter of binary must be one of"):
        binarize(mlp(), "xnor")
    with pytest.raises(ModelError, match="'stochastic' parameter of binary applies to method 'connect'"):
        BinaryWeights("bwn", 1.0, stochastic=True)
    with pytest.raises(RecipeError, match="method"):
        parse_recipe({"name": "x", "baseline": {"train": {"epochs": 1}},
                      "stages": [{"technique": "binary", "method": "xnor"}]})


def test_comparison_table_with_full_precision_row(tmp_path) -> None:
    adam = {"epochs": 1, "optimizer": "adam", "lr": 0.001}
    recipe = parse_recipe({
        "name": "lab", "data": {"limit": 200}, "baseline": {"train": {"epochs": 2}}, "measure": {"latency": False},
        "stages": [{"technique": "compare", "include_baseline": "full-precision", "report_key": "comparison",
                    "methods": [{"technique": "binary", "name": m, "method": m, "finetune": adam}
                                for m in ("connect", "bwn", "lab")]}]})
    res = run_recipe(recipe, tmp_path, progress=False, console=Console(file=io.StringIO()))
    rows = res.report["comparison"]
    assert [r["method"] for r in rows] == ["full-precision", "connect", "bwn", "lab"]
    for r in rows:
        assert set(r) >= {"method", "accuracy", "file_bytes", "ratio"}
        assert r["file_bytes"] == (tmp_path / "compare" / f"{r['method']}.tsk").stat().st_size
    assert rows[0]["ratio"] < 1.2 and all(r["ratio"] > 10 for r in rows[1:])
    assert read_tsk(tmp_path / "compare" / "lab.tsk").record("fc2.weight")["form"] == "binary"


def test_shipped_recipe_parses_on_mnist_and_a_cnn() -> None:
    r = load_recipe("hou2017_lab", ["data.name=mnist", "model.name=lenet5"])
    assert [m.method for m in r.stages[0].methods] == ["connect", "bwn", "lab"]


@pytest.mark.parametrize("shape", [(16, 128), (33, 300), (300, 64)])
@pytest.mark.parametrize("per_channel", [True, False])
def test_both_batch1_paths_match_the_reference(shape: tuple[int, int], per_channel: bool) -> None:
    """The VPERMPS kernel (AVX-512, bit planes) and the portable gather kernel agree with the decoded weight."""
    g = np.random.default_rng(shape[0])
    positive = g.integers(0, 2, shape).astype(np.uint8)
    w = BinaryKernel.from_signs(positive, (g.random(shape[0] if per_channel else 1) + 0.1).astype(np.float32))
    assert (w.words is not None) == kern.HAS_PERMVAR
    x = torch.randn(1, shape[1])
    want = reference_binary_matmul(x, w)
    for path in (w, replace(w, words=None)):
        torch.testing.assert_close(binary_matmul(x, path), want, atol=ATOL, rtol=RTOL)


def test_bit_planes_hold_row_bits_by_32_input_words() -> None:
    positive = np.zeros((3, 40), np.uint8)
    positive[1, 33] = 1
    words = kern.bit_planes(positive)
    assert words.shape == (1, kern.PERM_WORDS, kern.PERM_ROWS)  # inputs padded to 128, rows to 16
    assert words[0, 1, 1] == 1 << 1 and np.count_nonzero(words) == 1


def test_half_bias_trains_fp16_values_and_the_file_stores_them_exactly_in_16_bits(tmp_path) -> None:
    torch.manual_seed(0)
    model = binarize(mlp(), "lab", half_bias=True)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 12)).square().sum().backward()
        opt.step()
    latent = original(model[0], "bias")
    assert latent.grad is not None and latent.grad.abs().sum() > 0  # straight-through to the fp32 latent bias
    bias = model[0].bias.detach()
    assert torch.equal(bias, bias.half().float()) and not torch.equal(latent.detach(), bias)
    info = save(model, tmp_path / "h.tsk")
    f = read_tsk(tmp_path / "h.tsk")
    assert info.codecs["0.bias"] == "dense:fp16(exact)" and f.nbytes("0.bias") == 2 * 20
    assert torch.equal(f.tensor("0.bias"), bias) and f.tensor("0.bias").dtype == torch.float32
    assert f.record("0.weight")["params"]["inline"] == 1 and set(f.record("0.weight")["streams"]) == {"positive"}
    assert np.array_equal(f.array("0.weight"), model[0].weight.detach().numpy())


def test_a_per_layer_alpha_stream_of_older_files_still_decodes() -> None:
    form = FORMS["binary"]
    alpha = np.array([0.375], np.float32)
    streams = {"positive": np.array([[1, 0, 1]], np.uint8), "alpha": alpha}
    rec = {"shape": [1, 3], "params": {"alpha": 0.375}, "streams": {"positive": {}, "alpha": {}}}
    got = form.decode(lambda role, shape=None, ndim=None: streams[role], rec)
    assert np.array_equal(got["alpha"], alpha) and set(form.roles(rec["params"], "w")) == {"positive", "alpha"}
    assert set(form.roles({"alpha": 0.375, "inline": 1}, "w")) == {"positive"}


def test_shipped_recipe_compares_the_mlp_and_the_cnn() -> None:
    r = load_recipe("hou2017_lab")
    assert r.model.name == "lenet300" and r.stages[0].models == ["lenet5"]
    assert r.stages[0].report_key == "comparison"


def test_8_bit_grid_biases_and_bwn_alpha_train_and_store_exactly_in_8_bits(tmp_path) -> None:
    """bias_bits / alpha_bits 8: k · 2^e values in forward (straight-through), one byte each in the file."""
    from torchshrink.quantize.pow2 import grid_codes

    torch.manual_seed(0)
    model = binarize(mlp(), "bwn", half_bias=True, bias_bits=8, alpha_bits=8)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 12)).square().sum().backward()
        opt.step()
    assert original(model[0], "bias").grad.abs().sum() > 0 and original(model[0]).grad.abs().sum() > 0
    bias = model[0].bias.detach()
    alpha = find(model[0], BinaryWeights).scale(original(model[0])).reshape(-1).detach()
    for v, signed in ((bias, True), (alpha, False)):  # on one power-of-two grid with 8-bit codes
        assert grid_codes(v.numpy(), 8, signed) is not None
        assert grid_codes(v.numpy() * 1.001, 8, signed) is None  # what an off-grid vector gives
    save(model, tmp_path / "g.tsk")
    f = read_tsk(tmp_path / "g.tsk")
    assert f.record("0.bias")["codec"] == "dense:int8(exact)" and f.nbytes("0.bias") == 20
    assert f.record("0.weight")["codec"].endswith("alpha/channel:8b")
    assert f.nbytes("0.weight") == 20 * 12 // 8 + 20  # sign bits + one byte of α per channel
    assert torch.equal(f.tensor("0.bias"), bias)
    assert np.array_equal(f.array("0.weight"), model[0].weight.detach().numpy())  # bit for bit
    x = torch.randn(5, 12)
    torch.testing.assert_close(load(tmp_path / "g.tsk", model=mlp(), dense=True)(x), model(x), rtol=0, atol=0)


def test_grid_codes_are_exact_or_refused() -> None:
    from torchshrink.quantize.pow2 import grid_codes, grid_values, round_to_grid

    torch.manual_seed(0)
    for signed, x in ((True, torch.randn(300) * 0.1), (False, torch.rand(64) * 3 + 0.01)):
        q = round_to_grid(x, 8, signed).numpy()
        codes, e = grid_codes(q, 8, signed)
        assert np.array_equal(grid_values(codes, e, 8, signed).view(np.uint32), q.view(np.uint32))
        assert np.abs(q - x.numpy()).max() <= 2.0 ** (e - 1) + 1e-12  # round to nearest on the grid
    assert grid_codes(np.array([0.1, 0.2], np.float32)) is None  # not on an 8-bit grid
    assert grid_codes(np.array([-0.0, 1.0], np.float32)) is None  # -0.0 would come back as +0.0
    assert grid_codes(np.array([np.nan], np.float32)) is None
    assert grid_codes(np.array([-1.0], np.float32), signed=False) is None


def test_a_dense_or_binary_record_with_a_bad_grid_exponent_is_refused() -> None:
    from torchshrink.errors import TskFormatError

    data = {"data": np.array([129, 127], np.uint8), "alpha": np.array([3, 4], np.uint8),
            "positive": np.array([[1, 0], [0, 1]], np.uint8)}
    read = lambda role, shape=None, ndim=None: data[role]  # noqa: E731
    for exp in (10_000, 1.5, True):
        with pytest.raises(TskFormatError, match="exp"):
            FORMS["dense"].decode(read, {"shape": [2], "dtype": "float32", "params": {"exp": exp}, "streams": {}})
        with pytest.raises(TskFormatError, match="alpha_exp"):
            FORMS["binary"].decode(read, {"shape": [2, 2], "params": {"alpha_exp": exp}, "streams": {}})
    got = FORMS["dense"].decode(read, {"shape": [2], "dtype": "float32", "params": {"exp": -2}, "streams": {}})
    assert got.tolist() == [0.25, -0.25]
