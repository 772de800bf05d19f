"""Trained Ternary Quantization: gradients (finite differences), exact storage, kernels, recipe round trip."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from torchshrink.core.transform import find, original
from torchshrink.errors import ModelError, RecipeError, TskFormatError
from torchshrink.format import load, read_tsk, save
from torchshrink.forms import FORMS
from torchshrink.forms.ternary import from_symbols, to_symbols
from torchshrink.pipeline import run_recipe
from torchshrink.quantize.ternary import TrainedTernary, ttq
from torchshrink.recipe import load_recipe, parse_recipe
from torchshrink.runtime import TernaryKernel, reference_ternary_matmul, ternary_matmul
from torchshrink.format.streams import Options
from torchshrink.runtime import _lut_kernels as kern
from torchshrink.runtime.dispatch import calibrate, force, paths
from torchshrink.runtime.ternary import TernaryConv2d, TernaryLinear

#: Kernel vs reference: float32 sums in another order (and x scaled by Wp, Wn first).
ATOL, RTOL = 1e-4, 1e-4


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))


def test_forward_is_three_levels_and_equals_unpack_of_pack_bit_for_bit() -> None:
    model = ttq(mlp(), 0.05)
    layer = model[2]
    t = find(layer, TrainedTernary)
    assert find(model[0], TrainedTernary) is None and find(model[4], TrainedTernary) is None  # first/last stay fp32
    w = layer.weight.detach()
    latent = original(layer).detach()
    assert float(latent.abs().max()) == pytest.approx(1.0)  # latent normalized by max|w| (TTQ §3)
    delta = 0.05 * latent.abs().max()
    expect = torch.where(latent > delta, t.wp, torch.where(latent < -delta, -t.wn, torch.zeros(())))
    assert torch.equal(w, expect)
    packed = t.pack(latent)
    assert set(np.unique(packed["codes"])) <= {0, 1, 2}
    assert np.array_equal(FORMS["ternary"].unpack(packed), w.numpy())


def test_scale_and_latent_gradients_match_finite_differences_and_the_paper_formulas() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(5, 4).double()
    ttq(nn.Sequential(layer), 0.3, keep_first_last=False)
    t = find(layer, TrainedTernary)
    t.double()
    x, y = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 4, (7,))

    def loss_of(w_eff: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(F.linear(x, w_eff, layer.bias), y)

    loss_of(layer.weight).backward()
    latent = original(layer)
    delta = 0.3 * latent.detach().abs().max()
    pos, neg = latent.detach() > delta, latent.detach() < -delta
    assert pos.any() and neg.any() and (~pos & ~neg).any()
    h = 1e-6
    with torch.no_grad():
        w0 = layer.weight.detach().clone()
        # dL/dWp and dL/dWn by central differences through the whole transform
        fd = []
        for p in (t.wp, t.wn):
            p += h
            up = float(loss_of(layer.weight))
            p -= 2 * h
            down = float(loss_of(layer.weight))
            p += h
            fd.append((up - down) / (2 * h))
        # g = dL/dw_t by central differences on the effective weight
        g = torch.zeros_like(w0)
        for i in range(w0.numel()):
            e = torch.zeros_like(w0).view(-1)
            e[i] = h
            e = e.view_as(w0)
            g.view(-1)[i] = (float(loss_of(w0 + e)) - float(loss_of(w0 - e))) / (2 * h)
    assert float(t.wp.grad) == pytest.approx(fd[0], rel=1e-6, abs=1e-9)
    assert float(t.wn.grad) == pytest.approx(fd[1], rel=1e-6, abs=1e-9)
    # Eq. 7 as a sum over the sets (not a mean), with the sign the forward value -Wn implies
    assert float(t.wp.grad) == pytest.approx(float(g[pos].sum()), rel=1e-6)
    assert float(t.wn.grad) == pytest.approx(float(-g[neg].sum()), rel=1e-6)
    # Eq. 8: Wp·g on I_p, g on I_z, Wn·g on I_n
    wp, wn = float(t.wp.detach()), float(t.wn.detach())
    expect = torch.where(pos, wp * g, torch.where(neg, wn * g, g))
    torch.testing.assert_close(latent.grad, expect, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("shape", [(7, 13), (37, 53), (64, 64), (130, 70)])
@pytest.mark.parametrize("batch", [1, 3, 65])
def test_kernel_matches_its_reference_twin(shape: tuple[int, int], batch: int) -> None:
    g = np.random.default_rng(shape[0] * 1000 + batch)
    codes = g.choice(3, size=shape, p=[0.5, 0.25, 0.25]).astype(np.uint8)
    w = TernaryKernel.from_codes(codes, np.array([0.7, 0.3], np.float32))
    assert np.array_equal(w.codes(), codes)
    x, bias = torch.randn(batch, shape[1]), torch.randn(shape[0])
    torch.testing.assert_close(ternary_matmul(x, w, bias), reference_ternary_matmul(x, w, bias), atol=ATOL, rtol=RTOL)


def test_kernel_refuses_bad_input_with_a_clear_error() -> None:
    w = TernaryKernel.from_codes(np.zeros((4, 6), np.uint8), [1.0, 1.0])
    with pytest.raises(ModelError, match="last dimension must be 6"):
        ternary_matmul(torch.randn(2, 5), w)
    with pytest.raises(ModelError, match="values in \\{0, 1, 2\\}"):
        TernaryKernel.from_codes(np.full((2, 2), 3, np.uint8), [1.0, 1.0])
    with pytest.raises(ModelError, match="two finite values"):
        TernaryKernel.from_codes(np.zeros((2, 2), np.uint8), [1.0])


def test_base3_symbols_round_trip_and_refuse_corruption() -> None:
    g = np.random.default_rng(0)
    for n in (1, 4, 5, 6, 101):
        trits = g.integers(0, 3, n).astype(np.uint8)
        assert np.array_equal(from_symbols(to_symbols(trits), n), trits)
    with pytest.raises(TskFormatError, match="must lie in \\[0, 242\\]"):
        from_symbols(np.array([243], np.uint8), 5)
    with pytest.raises(TskFormatError, match="nonzero padding"):
        from_symbols(np.array([81], np.uint8), 4)  # a 5th code (3^4 = 81) after 4 weights


def wide_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(30, 200), nn.ReLU(), nn.Linear(200, 300), nn.ReLU(), nn.Linear(300, 4))


def convnet() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 256, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(256, 4, 1))


def test_file_round_trip_is_exact_and_stores_under_two_bits(tmp_path) -> None:
    torch.manual_seed(0)
    model = ttq(wide_mlp(), 0.05)
    info = save(model, tmp_path / "m.tsk")
    f = read_tsk(tmp_path / "m.tsk")
    rec = f.record("2.weight")
    assert rec["form"] == "ternary"
    assert rec["params"]["wp"] == float(find(model[2], TrainedTernary).wp.detach())
    assert np.array_equal(f.array("2.weight"), model[2].weight.detach().numpy())
    assert f.packed("2.weight")["codes"].shape == (300, 200)
    assert 8 * f.nbytes("2.weight") / 60000 <= 1.6 + 8 * 8 / 60000  # base-3 bytes or Huffman, + two fp32 scales
    assert info.file_bytes == (tmp_path / "m.tsk").stat().st_size
    fast = force(load(f, model=wide_mlp()), "kernel")
    assert isinstance(fast[2], TernaryLinear)
    x = torch.randn(9, 30)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), load(f, model=wide_mlp(), dense=True)(x), atol=ATOL, rtol=RTOL)


def test_conv_runtime_module_matches_the_decoded_conv(tmp_path) -> None:
    torch.manual_seed(0)
    save(ttq(convnet()), tmp_path / "c.tsk")
    fast = force(load(tmp_path / "c.tsk", model=convnet()), "kernel")
    plain = load(tmp_path / "c.tsk", model=convnet(), dense=True)
    assert isinstance(fast[2], TernaryConv2d)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=ATOL, rtol=RTOL)


def test_small_layers_get_the_kernel_and_the_measured_dispatch_decides(tmp_path) -> None:
    save(ttq(wide_mlp()), tmp_path / "m.tsk")
    fast = load(tmp_path / "m.tsk", model=wide_mlp())
    assert isinstance(fast[2], TernaryLinear)  # no size threshold: 60k weights get the kernel module too
    calibrate(fast, (30,), batches=(1, 4))
    decided = {(row["layer"], row["batch"]): row["path"] for row in paths(fast)}
    assert set(decided.values()) <= {"kernel", "dense"} and {b for _, b in decided} == {1, 4}
    x = torch.randn(4, 30)
    with torch.no_grad():
        by_kernel, by_dense = force(fast, "kernel")(x), force(fast, "dense")(x)
    torch.testing.assert_close(by_kernel, by_dense, atol=ATOL, rtol=RTOL)


def test_bad_parameters_name_the_key() -> None:
    with pytest.raises(ModelError, match="'threshold' parameter of ttq must be a float in \\[0, 1\\)"):
        ttq(mlp(), 1.5)
    with pytest.raises(RecipeError, match="threshold"):
        parse_recipe({"name": "x", "baseline": {"train": {"epochs": 1}},
                      "stages": [{"technique": "ttq", "threshold": -0.1}]})
    with pytest.raises(ModelError, match="selected no layer"):
        ttq(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), layers=["0"])


def test_recipe_round_trip_on_digits(tmp_path) -> None:
    recipe = parse_recipe({"name": "t", "data": {"limit": 200}, "model": {"name": "lenet300"},
                           "baseline": {"train": {"epochs": 3}},
                           "stages": [{"technique": "ttq", "finetune": {"epochs": 1, "optimizer": "adam",
                                                                        "lr": 0.001}}],
                           "measure": {"latency": False}})
    res = run_recipe(recipe, tmp_path, progress=False, console=Console(file=io.StringIO()))
    assert res.report["size"]["roundtrip_exact"] is True
    layers = {row["name"]: row for row in res.report["layers"]}
    assert layers["fc2"]["form"] == "ternary" and "fc1" in layers and layers["fc1"]["form"] != "ternary"
    assert set(layers["fc2"]["form_params"]) >= {"wp", "wn"}
    # fc2 got a ternary runtime layer; the measured dispatch then kept it or its dense twin
    assert "fc2" in {row["layer"] for row in res.report["runtime"]["paths"]}
    assert res.report["runtime"]["compressed_layers"] <= 1
    assert res.report["runtime"]["prediction_agreement"] == 1.0


def test_shipped_recipe_parses_and_selects_resnet_variants() -> None:
    r = load_recipe("zhu2016_ttq_resnet20", ["data.name=digits", "model.name=resnet44"])
    assert r.model.name == "resnet44" and r.stages[0].technique == "ttq"


@pytest.mark.parametrize("shape", [(16, 128), (33, 300), (300, 64)])
def test_both_batch1_paths_match_the_reference(shape: tuple[int, int]) -> None:
    """The VPERMPS kernel (AVX-512, two bit planes) and the portable gather kernel agree with the decoded weight."""
    g = np.random.default_rng(shape[0])
    codes = g.choice(3, size=shape, p=[0.4, 0.3, 0.3]).astype(np.uint8)
    w = TernaryKernel.from_codes(codes, np.array([0.7, 0.3], np.float32))
    assert (w.words is not None) == kern.HAS_PERMVAR
    x = torch.randn(1, shape[1])
    want = reference_ternary_matmul(x, w)
    for path in (w, replace(w, words=None)):
        torch.testing.assert_close(ternary_matmul(x, path), want, atol=ATOL, rtol=RTOL)


def test_scales_are_inline_and_older_files_with_a_scales_stream_still_decode() -> None:
    form = FORMS["ternary"]
    value = {"form": "ternary", "shape": [2, 5], "codes": np.array([[0, 1, 2, 1, 0], [2, 2, 0, 0, 1]], np.uint8),
             "scales": np.array([0.1, 0.3], np.float32)}
    enc = form.encode(value, None, Options())
    assert [s.role for s in enc.streams] == ["codes"] and enc.params["inline"] == 1
    streams = {"codes": to_symbols(value["codes"]), "scales": value["scales"]}
    for params in (enc.params, {"group": 5, "wp": 0.1, "wn": 0.3}):
        rec = {"shape": [2, 5], "params": params, "streams": dict.fromkeys(form.roles(params, "w"), {})}
        got = form.decode(lambda role, shape=None, ndim=None: streams[role], rec)
        assert np.array_equal(got["scales"], value["scales"]) and np.array_equal(got["codes"], value["codes"])
