"""Bitwise Neural Networks (Kim & Smaragdis 2016): kernels, transforms, surgery, form, recipe."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
import torch
from numba import njit
from rich.console import Console
from torch import nn

from torchshrink.data import load_data
from torchshrink.errors import ModelError, RecipeError, TskFormatError
from torchshrink.format import load, read_tsk, save
from torchshrink.forms import FORMS
from torchshrink.models import build_model
from torchshrink.pipeline import run_recipe
from torchshrink.quantize.bitwise import BinarySign, TanhSquash, binarize, squash
from torchshrink.recipe import parse_recipe
from torchshrink.runtime import _xnor_kernels as kern
from torchshrink.runtime.dispatch import unwrap_runtime
from torchshrink.runtime.xnor import (BitwiseMLP, XnorConvWeight, XnorWeight, cpu_popcount, pack_nhwc, pack_rows,
                                      pack_signs, reference_xnor_conv2d, reference_xnor_matmul, unpack_rows,
                                      xnor_conv2d, xnor_matmul)
from torchshrink.surgery import parse_plan
from torchshrink.surgery.binary_activations import (BinaryInput, FoldThresholdOp, OutputScale, OutputScaleOp,
                                                    SignActivation, ThresholdSign, fold_thresholds, threshold_dtype)

PATHS = kern.PATHS


def pm1(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(*shape, generator=gen) > 0.5, 1.0, -1.0)


# --- kernels ---------------------------------------------------------------------------------


def test_pack_rows_round_trips_and_zero_pads_the_tail() -> None:
    bits = np.random.default_rng(0).integers(0, 2, (3, 70)).astype(bool)
    packed = pack_rows(bits)
    assert packed.shape == (3, 2) and packed.dtype == np.uint64
    assert np.array_equal(unpack_rows(packed, 70), bits.astype(np.uint8))
    assert not np.any(packed[:, 1] >> np.uint64(6))  # bits 70..127 are zero


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("batch", "n_out", "n_in"), [(1, 5, 3), (6, 33, 100), (9, 16, 128), (4, 70, 257)])
def test_xnor_matmul_equals_its_reference(path: str, batch: int, n_out: int, n_in: int) -> None:
    gen = torch.Generator().manual_seed(batch * n_in)
    w, x = pm1(n_out, n_in, gen=gen), pm1(batch, n_in, gen=gen)
    bias = torch.randn(n_out, generator=gen)
    weight = XnorWeight.from_dense(w)
    assert torch.equal(xnor_matmul(x, weight, path=path), reference_xnor_matmul(x, w))  # exact integers
    # with a bias, torch's addmm may add it before the products (other rounding): one ulp apart at most
    torch.testing.assert_close(xnor_matmul(x, weight, bias, path=path), reference_xnor_matmul(x, w, bias),
                               atol=1e-5, rtol=1e-6)
    assert np.array_equal(weight.to_dense(), w.numpy())


@pytest.mark.parametrize("path", PATHS)
def test_masked_weights_count_only_kept_entries(path: str) -> None:
    gen = torch.Generator().manual_seed(1)
    w = pm1(21, 90, gen=gen) * (torch.rand(21, 90, generator=gen) > 0.4)
    x = pm1(5, 90, gen=gen)
    weight = XnorWeight.from_dense(w)
    assert weight.masked
    assert torch.equal(xnor_matmul(x, weight, path=path), reference_xnor_matmul(x, w))
    assert np.array_equal(weight.to_dense(), w.numpy())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("masked", [False, True])
def test_sign_epilogue_packs_the_thresholded_outputs(path: str, masked: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    w = pm1(150, 77, gen=gen) * ((torch.rand(150, 77, generator=gen) > 0.3) if masked else 1)
    x = pm1(7, 77, gen=gen)
    t = torch.randint(-20, 20, (150,), generator=gen).int()
    flip = (torch.rand(150, generator=gen) > 0.5).to(torch.uint8)
    bits = XnorWeight.from_dense(w).sign_packed(pack_signs(x), t.numpy(), flip.numpy(), path=path)
    z = reference_xnor_matmul(x, w)
    expected = (z >= t.float()) != flip.bool()
    assert bits.shape == (7, 3)
    assert np.array_equal(unpack_rows(bits, 150), expected.numpy().astype(np.uint8))
    assert not np.any(bits[:, 2] >> np.uint64(150 - 128))  # bits past the last output stay 0


def test_non_binary_inputs_fall_back_to_a_float_matmul() -> None:
    gen = torch.Generator().manual_seed(3)
    w = pm1(8, 12, gen=gen)
    x = torch.randn(3, 12, generator=gen)
    torch.testing.assert_close(xnor_matmul(x, XnorWeight.from_dense(w)), reference_xnor_matmul(x, w),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("batch", "c", "o", "size", "k", "stride", "pad"),
                         [(2, 3, 5, 6, 3, 1, 1), (1, 70, 17, 7, 3, 2, 1), (3, 64, 16, 5, 1, 1, 0), (1, 8, 4, 9, 3, 1, 2)])
def test_binary_conv_with_plus_one_padding_equals_its_reference(path, batch, c, o, size, k, stride, pad) -> None:
    gen = torch.Generator().manual_seed(c + o)
    w, x = pm1(o, c, k, k, gen=gen), pm1(batch, c, size, size, gen=gen)
    y = xnor_conv2d(x, XnorConvWeight.from_dense(w), stride, pad, path=path)
    assert torch.equal(y, reference_xnor_conv2d(x, w, stride, pad))
    if pad:  # zero padding would give other border values
        assert not torch.equal(y, torch.nn.functional.conv2d(x, w, stride=stride, padding=pad))


def test_pack_nhwc_pads_with_plus_one_bits() -> None:
    x = -torch.ones(1, 3, 2, 2)
    bits = unpack_rows(pack_nhwc(x, 1).reshape(-1, 1), 3).reshape(4, 4, 3)
    assert bits[0].all() and bits[:, 0].all() and not bits[1:3, 1:3].any()


def test_fast_popcount_compiles_to_vpopcntq_where_the_cpu_has_it() -> None:
    if not cpu_popcount()["vpopcntdq"]:
        pytest.skip("this CPU has no AVX-512 VPOPCNTDQ")

    @njit
    def probe(x, wt, acc):  # the kernels' register-tiled micro-kernel, compiled afresh (cached code has no asm)
        kern._tile_rows(x.ctypes.data, x.shape[1], wt.ctypes.data, x.shape[1], acc.ctypes.data, 1, 0)

    x = np.random.default_rng(0).integers(0, 2**63, (kern.ROWS, 8)).astype(np.uint64)
    wt = np.random.default_rng(1).integers(0, 2**63, (1, 8, kern.LANES)).astype(np.uint64)
    acc = np.zeros((kern.ROWS, kern.LANES), np.uint64)
    probe(x, wt, acc)
    expected = [[sum(bin(int(a) ^ int(b)).count("1") for a, b in zip(x[r], wt[0, :, j])) for j in range(kern.LANES)]
                for r in range(kern.ROWS)]
    assert acc.tolist() == expected
    asm = probe.inspect_asm(probe.signatures[0])
    assert re.search(r"vpopcntq\s+%zmm", asm)  # 512-bit VPOPCNTQ, not ymm halves
    assert not re.search(r"vpaddq\s+\d*\(", asm)  # accumulators stay in registers (no add from memory)


def test_bad_kernel_arguments_name_the_problem() -> None:
    w = XnorWeight.from_dense(torch.ones(4, 8))
    with pytest.raises(ModelError, match="'path' parameter must be one of"):
        xnor_matmul(torch.ones(1, 8), w, path="avx9")
    with pytest.raises(ModelError, match="last dimension must be 8"):
        xnor_matmul(torch.ones(1, 9), w)
    with pytest.raises(ModelError, match="-1, 0 and \\+1"):
        XnorWeight.from_dense(torch.full((2, 2), 0.5))


# --- transforms and surgery -----------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.3])
def test_binary_sign_packs_exactly_what_it_returns_and_passes_gradients_through(sparsity: float) -> None:
    layer = nn.Linear(40, 6)
    t = binarize(layer, sparsity)
    w = layer.weight
    assert set(w.detach().unique().tolist()) <= {-1.0, 0.0, 1.0}
    latent = layer.parametrizations.weight.original
    packed = t.pack(latent)
    assert np.array_equal(FORMS["bitwise"].unpack(packed), w.detach().numpy())
    assert ("mask" in packed) == (sparsity > 0)
    w.sum().backward()
    torch.testing.assert_close(latent.grad, 1 - torch.tanh(latent.detach()) ** 2)


def test_squash_keeps_the_effective_weight() -> None:
    layer = nn.Linear(10, 4)
    before = layer.weight.detach().clone()
    assert isinstance(squash(layer), TanhSquash)
    torch.testing.assert_close(layer.weight.detach(), before, atol=1e-6, rtol=1e-5)
    assert isinstance(binarize(layer), BinarySign)
    assert torch.equal(layer.weight.detach(), torch.where(before >= 0, 1.0, -1.0))


def test_sign_activation_is_straight_through_inside_the_unit_interval() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = SignActivation()(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_binary_input_gives_the_bit_planes_of_the_quantized_input() -> None:
    x = torch.tensor([[0.0, 0.3, 0.6, 0.99]])
    assert BinaryInput(1, 0.0, 1.0)(x).tolist() == [[-1.0, -1.0, 1.0, 1.0]]
    planes = BinaryInput(2, 0.0, 1.0)(x)  # codes 0, 1, 2, 3
    assert planes.tolist() == [[-1.0, 1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0]]


def test_fold_reproduces_sign_of_batch_norm_for_every_reachable_dot_product() -> None:
    gen = torch.Generator().manual_seed(4)
    n, out = 37, 9
    fc, bn = nn.Linear(n, out), nn.BatchNorm1d(out)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(out, generator=gen) * 5)
        bn.running_var.copy_(torch.rand(out, generator=gen) * 20 + 0.1)
        bn.weight.copy_(torch.randn(out, generator=gen))
        bn.weight[0], bn.weight[1] = 0.0, -1.0  # a constant channel and a decreasing one
        bn.bias.copy_(torch.randn(out, generator=gen))
    bn.eval()
    t, flip = fold_thresholds(fc, bn)
    folded = ThresholdSign(out)
    folded.threshold.copy_(t), folded.flip.copy_(flip)
    z = torch.arange(-n, n + 1, dtype=torch.float32).unsqueeze(1).expand(-1, out)
    with torch.no_grad():
        expected = SignActivation()(bn(z + fc.bias))
    assert torch.equal(folded(z), expected)
    assert int(flip[1]) == 1
    assert threshold_dtype(n) == torch.int16 and threshold_dtype(40_000) == torch.int32  # thresholds lie in [-n, n+1]


def test_output_scale_starts_stage_two_at_stage_one_logits_and_needs_the_last_child() -> None:
    from torchshrink.quantize.bitwise import output_scale_op

    model = build_model("mlp", (1, 8, 8), 10, hidden=[16])
    squash(model.fc2)
    op = output_scale_op(model, {"fc2": model.fc2})
    torch.testing.assert_close(op.alpha, float(model.fc2.weight.detach().abs().mean()))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        model.eval()
        before = model(x)
        binarize(model.fc2)
        op.apply(model, init=True)
        after = model(x)
    assert list(dict(model.named_children()))[-1] == "out_scale"
    pre = model.drop1(model.act1(model.bn1(model.fc1(model.inp(model.flatten(x))))))
    torch.testing.assert_close(after, op.alpha * model.fc2(pre))  # the ±1 layer's logits times alpha
    assert (after - before).abs().mean() < (model.fc2(pre) - before).abs().mean()  # closer than unscaled
    assert output_scale_op(model, {"fc1": model.fc1}) is None  # the last child is not chosen
    with pytest.raises(ModelError, match="output_scale needs 'fc1' to be the model's last child"):
        OutputScaleOp(layer="fc1").apply(build_model("mlp", (1, 8, 8), 10, hidden=[16]), init=True)


def test_norm_stats_are_the_training_set_average_of_the_final_weights() -> None:
    from torchshrink.quantize.bitwise import recompute_norm_stats

    model = build_model("mlp", (1, 8, 8), 10, hidden=[12])
    x = torch.randn(70, 1, 8, 8)
    model.bn1.running_mean.fill_(5.0)
    model.eval()
    recompute_norm_stats(model, x, batch_size=32)  # three batches: 32, 32, 6
    assert not model.training and model.bn1.momentum == 0.1
    with torch.no_grad():
        z = model.fc1(x.reshape(70, -1))
    batches = [z[i : i + 32] for i in range(0, 70, 32)]  # cumulative average of the per-batch statistics
    torch.testing.assert_close(model.bn1.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))
    torch.testing.assert_close(model.bn1.running_var, torch.stack([b.var(0) for b in batches]).mean(0))


def test_surgery_ops_name_bad_layers() -> None:
    model = build_model("mlp", (1, 8, 8), 10, hidden=[16])
    with pytest.raises(ModelError, match="surgery step 0 has the unknown op"):
        parse_plan([{"op": "sign_activations", "layer": "act1"}])
    (op,) = parse_plan([{"op": "fold_threshold", "linear": "fc1", "norm": "bn1", "activation": "act1"}])
    with pytest.raises(ModelError, match="fold_threshold needs SignActivation at 'act1'; found Tanh"):
        op.apply(model, init=True)
    assert isinstance(op, FoldThresholdOp)


# --- form, recipe, runtime ------------------------------------------------------------------


def recipe(hidden: list[int], sparsity: float = 0.0, input_bits: int = 1, fold: bool = True,
           codecs: dict | None = None) -> object:
    train = {"epochs": 1, "optimizer": "adam", "lr": 0.002}
    stages = [{"technique": "bitwise", "stage": "real", "input_bits": input_bits, "finetune": train},
              {"technique": "bitwise", "stage": "binary", "sparsity": sparsity, "finetune": train}]
    if fold:
        stages.append({"technique": "bitwise", "stage": "fold"})
    return parse_recipe({"name": "bitwise_test", "data": {"name": "digits", "limit": 400},
                         "model": {"name": "mlp", "args": {"hidden": hidden}}, "baseline": {"train": train},
                         "stages": stages, "save": {"codecs": codecs or {}}, "measure": {"latency": False}})


def run(rec: object, out) -> object:
    return run_recipe(rec, out, progress=False, console=Console(file=io.StringIO()))


@pytest.mark.slow
def test_recipe_round_trip_runs_one_bitwise_mlp_with_predictions_of_the_decoded_model(tmp_path) -> None:
    res = run(recipe([64, 48]), tmp_path)
    f = read_tsk(tmp_path / "model.tsk")
    rec = f.record("fc2.weight")
    assert rec["form"] == "bitwise" and rec["codec"] == "bitwise(1b)"
    assert f.nbytes("fc2.weight") == math.ceil(48 * 64 / 8)  # one bit per weight
    assert f.tensor("act1.threshold").dtype == torch.int16 and "fc1.bias" not in f.records  # folded
    assert res.report["size"]["roundtrip_exact"] is True
    fast, plain = load(f), load(f, dense=True)
    assert isinstance(unwrap_runtime(fast), BitwiseMLP) and isinstance(plain.act1, ThresholdSign)
    assert isinstance(plain.out_scale, OutputScale) and 0 < float(plain.out_scale.alpha) < 1  # mean |tanh w|
    assert unwrap_runtime(fast).scale.alpha is not None
    x = load_data("digits").test.tensors[0]
    with torch.no_grad():  # integer dot products; only the last layer's bias add may round differently
        torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-6)
        assert torch.equal(fast(x).argmax(1), plain(x).argmax(1))
        torch.testing.assert_close(fast(x[:1]), plain(x[:1]), atol=1e-5, rtol=1e-6)
    assert res.report["runtime"]["prediction_agreement"] == 1.0
    acc = [h["accuracy"] for h in res.report["history"] if "accuracy" in h]
    assert acc[-1] == acc[-2]  # folding changes no prediction


@pytest.mark.slow
def test_sparse_bit_plane_network_stores_a_mask_and_runs_exactly(tmp_path) -> None:
    run(recipe([40], sparsity=0.05, input_bits=2, codecs={"fc*.weight": "bitpack"}), tmp_path)
    f = read_tsk(tmp_path / "model.tsk")
    assert f.record("fc1.weight")["codec"] == "bitwise(1b+mask)" and f.shape("fc1.weight") == (40, 128)
    assert f.nbytes("fc1.weight") == 2 * math.ceil(40 * 128 / 8)
    fast, plain = load(f), load(f, dense=True)
    assert isinstance(unwrap_runtime(fast), BitwiseMLP)
    x = load_data("digits").test.tensors[0][:50]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-6)


@pytest.mark.slow
def test_unfolded_network_runs_per_layer_kernels(tmp_path) -> None:
    run(recipe([32], fold=False), tmp_path)
    f = read_tsk(tmp_path / "model.tsk")
    fast, plain = load(f), load(f, dense=True)
    assert not isinstance(unwrap_runtime(fast), BitwiseMLP) and isinstance(unwrap_runtime(fast).act1, SignActivation)
    x = load_data("digits").test.tensors[0][:64]
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-5)


def test_a_corrupted_mask_flag_is_refused(tmp_path) -> None:
    model = build_model("mlp", (1, 8, 8), 10, hidden=[8])
    binarize(model.fc2)
    save(model, tmp_path / "m.tsk")
    f = read_tsk(tmp_path / "m.tsk")
    with pytest.raises(TskFormatError, match="params 'masked' must be true or false"):
        FORMS["bitwise"].roles({"masked": "yes"}, "fc2.weight")
    assert f.record("fc2.weight")["params"] == {"masked": False}


@pytest.mark.parametrize(("stage", "match"), [({"stage": "binary", "sparsity": 1.0}, "sparsity"),
                                              ({"stage": "real", "input_bits": 0}, "input_bits"),
                                              ({"stage": "twice"}, "stage")])
def test_bad_stage_parameters_name_the_key(stage: dict, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        parse_recipe({"name": "x", "model": {"name": "mlp"}, "stages": [{"technique": "bitwise", **stage}]})


def test_fold_before_binary_is_a_clear_error(tmp_path) -> None:
    rec = parse_recipe({"name": "x", "model": {"name": "mlp", "args": {"hidden": [8]}},
                        "baseline": {"train": {"epochs": 0}}, "stages": [{"technique": "bitwise", "stage": "fold"}],
                        "measure": {"latency": False}})
    with pytest.raises(ModelError, match="run stage 'binary' first"):
        run(rec, tmp_path)
