"""Q-CNN (Wu et al. 2016): response-error PQ, error correction, the conv layout, LUT inference."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from rich.console import Console
from torch import nn

from torchshrink.errors import ModelError, RecipeError
from torchshrink.format import load, read_tsk, save
from torchshrink.forms import unpack
from torchshrink.pipeline import run_recipe
from torchshrink.quantize.product import kmeans_subspaces
from torchshrink.quantize.qcnn import Moments, QCNNQuantized, Residuals, channel_order, qcnn_quantize, response_pq
from torchshrink.recipe import load_recipe
from torchshrink.runtime import PQKernel, pq_matmul, reference_pq_matmul


def test_channel_order_is_the_kh_kw_cin_view():
    w = torch.randn(5, 6, 3, 2)
    order = torch.from_numpy(channel_order(w.shape))
    assert torch.equal(w.reshape(5, -1)[:, order], w.permute(0, 2, 3, 1).reshape(5, -1))


def test_channels_layout_forward_equals_unpack_of_pack():
    g = torch.Generator().manual_seed(0)
    cb, codes = torch.randn(3 * 3 * 2, 4, 3, generator=g), torch.randint(0, 4, (8, 18), generator=g)
    t = QCNNQuantized(cb, codes, (8, 6, 3, 3), "channels")
    w = t(torch.zeros(8, 6, 3, 3))
    packed = t.pack(torch.zeros(8, 6, 3, 3))
    assert packed["layout"] == "channels"
    assert np.array_equal(unpack(packed), w.detach().numpy())
    # sub-vector (p, g) holds channels g*d..g*d+d-1 at kernel position p
    assert torch.equal(w[0, 3:6, 1, 2], cb[(1 * 3 + 2) * 2 + 1, codes[0, (1 * 3 + 2) * 2 + 1]])


def _response_err(x, w, w_hat):
    return float((x @ w.T - x @ w_hat.T).square().sum())


def _decode(cb, codes):
    return cb[torch.arange(cb.shape[0]).unsqueeze(0), codes].reshape(codes.shape[0], -1)


def _correlated(n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g) @ torch.randn(dim, dim, generator=g)).double()


def test_response_pq_beats_weight_pq_and_is_exact_with_a_codeword_per_row():
    x, w = _correlated(400, 12, 0), torch.randn(10, 12, generator=torch.Generator().manual_seed(1)).double()
    sub = w.float().reshape(10, -1, 4).transpose(0, 1)
    cb0, codes0 = kmeans_subspaces(sub, 3, 20)
    cb, codes = response_pq(w, Moments.of(x, x @ w.T), cb0, codes0)
    before, after = _response_err(x, w, _decode(cb0, codes0).double()), _response_err(x, w, _decode(cb, codes).double())
    assert after < 0.9 * before
    cbf, codesf = kmeans_subspaces(sub, 10, 20)  # K = out: every row can have its own codeword
    cb, codes = response_pq(w, Moments.of(x, x @ w.T), cbf, codesf)
    assert _response_err(x, w, _decode(cb, codes).double()) <= 1e-6 * float((x @ w.T).square().sum())


def test_residual_form_fits_exactly_as_the_moments_do():
    x, w = _correlated(30, 12, 3), torch.randn(10, 12, generator=torch.Generator().manual_seed(4)).double()
    cb0, codes0 = kmeans_subspaces(w.float().reshape(10, -1, 4).transpose(0, 1), 3, 20)
    y = x @ w.T
    cb_m, codes_m = response_pq(w, Moments.of(x.float(), y), cb0, codes0)
    cb_r, codes_r = response_pq(w, Residuals(x.float(), y), cb0, codes0)
    assert torch.equal(codes_m, codes_r)
    assert torch.allclose(cb_m, cb_r, rtol=1e-5, atol=1e-6)


def test_a_layer_too_big_for_max_gib_stops_with_a_clear_error():
    model = nn.Sequential(nn.Linear(4096, 16))
    with pytest.raises(ModelError, match="'0'.*max_gib"):
        qcnn_quantize(model, torch.randn(64, 4096), 4, 4, max_gib=1e-3)


def _two_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def test_error_correction_lowers_the_output_error_on_the_calibration_set():
    model = _two_layer()
    x = _correlated(512, 16, 2).float()
    errs = {}
    for label, kw in {"weight": {"objective": "weight"}, "response": {"error_correction": False}, "ec": {}}.items():
        q = qcnn_quantize(copy.deepcopy(model), x, 4, 4, **kw)
        with torch.no_grad():
            errs[label] = float((q(x) - model(x)).square().mean())
    assert errs["ec"] <= errs["response"] < errs["weight"]


def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 10))


def test_conv_model_saves_exactly_and_runs_by_lookup_tables(tmp_path):
    model = _conv_model()
    x = torch.randn(64, 6, 5, 5)
    qcnn_quantize(model, x, {"0": 3, "3": 4}, 8, half_codebooks=True)
    save(model, tmp_path / "q.tsk")
    f = read_tsk(tmp_path / "q.tsk")
    rec = f.record("0.weight")
    assert rec["form"] == "pq" and rec["params"]["layout"] == "channels"
    assert rec["streams"]["codebooks"]["meta"]["dtype"] == "float16"  # fp16-exact codewords stored in 16 bits
    plain = _conv_model()
    dense = load(f, model=plain, dense=True)
    with torch.no_grad():
        assert torch.equal(dense(x), model(x))
        fast = load(f, model=_conv_model())
        assert isinstance(fast[0].weight_, PQKernel) and fast[0].weight_.input_order is not None
        assert torch.allclose(fast(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 7])
def test_channel_layout_kernel_matches_its_reference(batch):
    g = torch.Generator().manual_seed(0)
    shape = (16, 8, 3, 3)
    cb = torch.randn(9 * 2, 256 if batch == 1 else 16, 4, generator=g).numpy()
    codes = torch.randint(0, cb.shape[1], (16, 18), generator=g).numpy().astype(np.uint8)
    k = PQKernel.from_packed({"form": "pq", "shape": list(shape), "codebooks": cb, "codes": codes,
                              "subvector": 4, "pad": 0, "layout": "channels"})
    assert np.array_equal(k.to_dense().reshape(shape), unpack({"form": "pq", "shape": list(shape), "codebooks": cb,
                                                              "codes": codes, "subvector": 4, "pad": 0,
                                                              "layout": "channels"}))
    x = torch.randn(batch, 72, generator=g)
    assert torch.allclose(pq_matmul(x, k), reference_pq_matmul(x, k), rtol=1e-4, atol=1e-4)


def test_bad_parameters_name_the_problem():
    x = torch.randn(8, 6, 5, 5)
    with pytest.raises(ModelError, match="subvector 4 .*'0'"):
        qcnn_quantize(_conv_model(), x, 4, 8)
    with pytest.raises(ModelError, match="objective"):
        qcnn_quantize(_conv_model(), x, 3, 8, objective="weights")
    with pytest.raises(ModelError, match="calibration"):
        qcnn_quantize(_conv_model(), x[:0], 3, 8)
    with pytest.raises(ModelError, match="codewords"):
        qcnn_quantize(_conv_model(), x, 3, 0)
    with pytest.raises(RecipeError, match="error_corection"):
        load_recipe("wu2016_qcnn", ["stages.1.error_corection=false"])


def test_recipe_runs_on_digits_and_compares_the_three_objectives(tmp_path):
    sets = ["baseline.train.epochs=1", "data.limit=300", "stages.0.methods.0.calibration=100", "stages.0.methods.0.iters=3", "stages.0.methods.1.calibration=100", "stages.0.methods.1.iters=3",
            "stages.0.methods.2.calibration=100", "stages.0.methods.2.iters=3", "stages.1.calibration=100", "stages.1.passes=1", "stages.1.iters=3",
            "stages.0.methods.1.passes=1", "stages.0.methods.2.passes=1"]
    res = run_recipe(load_recipe("wu2016_qcnn", sets), tmp_path, progress=False, console=Console(file=io.StringIO()))
    rep = res.report
    assert [m["method"] for m in rep["methods"]] == ["weight-error", "response-error", "error-corrected"]
    sizes = [m["file_bytes"] for m in rep["methods"]]
    assert max(sizes) <= 1.1 * min(sizes)  # equal codebook sizes (the codes' Huffman coding may differ a little)
    assert rep["size"]["roundtrip_exact"] is True
    assert read_tsk(tmp_path / "model.tsk").record("conv2.weight")["params"]["layout"] == "channels"
