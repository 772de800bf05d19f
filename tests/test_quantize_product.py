"""Tests of product and residual quantization (Gong et al. 2014 §3.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_mlp
from torch import nn

from torchshrink.errors import ModelError
from torchshrink.quantize import (
    ProductQuantized,
    ResidualQuantized,
    compression_rate_pq,
    compression_rate_rq,
    product_quantize,
    residual_quantize,
    kmeans,
)
from torchshrink.quantize.product import _means, kmeans_subspaces, subvectors
from torchshrink.train import TrainConfig, fit
from torchshrink.core.transform import find, original


# ----------------------------------------------------------------- reference decoders (numpy)
def _gather_np(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return codebooks[np.arange(codebooks.shape[0])[None, :], codes.astype(np.int64)]


def decode_pq(p: dict) -> np.ndarray:
    shape = p["shape"]
    depth = math.prod(shape[1:])
    rows = _gather_np(p["codebooks"], p["codes"]).reshape(shape[0], -1)
    assert rows.shape[1] == depth + p["pad"]
    return rows[:, :depth].reshape(shape)


def decode_rq(p: dict) -> np.ndarray:
    shape = p["shape"]
    total = _gather_np(p["stages"][0]["codebooks"], p["stages"][0]["codes"])
    for st in p["stages"][1:]:
        total = total + _gather_np(st["codebooks"], st["codes"])
    return total.reshape(shape[0], -1)[:, : math.prod(shape[1:])].reshape(shape)


def _weight(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------- product quantization
def test_pq_forward_by_hand_with_padding():
    # weight [2, 3] with d = 2: S = 2 sub-spaces, one zero of padding
    cb = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    pq = ProductQuantized(cb, torch.tensor([[1, 0], [0, 1]]), (2, 3))
    assert pq.pad == 1 and pq.subvector == 2
    assert torch.equal(pq(torch.zeros(2, 3)), torch.tensor([[3.0, 4.0, 5.0], [1.0, 2.0, 7.0]]))


def test_pq_codeword_gradient_is_sum_of_member_gradients():
    cb = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    pq = ProductQuantized(cb, torch.tensor([[1], [1], [0]]), (3, 2))
    g = torch.tensor([[1.0, 2.0], [0.5, -1.0], [4.0, 8.0]])
    (pq(torch.zeros(3, 2)) * g).sum().backward()
    assert torch.equal(pq.codebooks.grad, torch.tensor([[[4.0, 8.0], [1.5, 1.0]]]))


@pytest.mark.parametrize("shape,d", [((16, 10), 4), ((12, 3, 3, 3), 5), ((8, 6), 6), ((8, 6), 50)])
def test_pq_pack_decodes_bit_for_bit(shape, d):
    w = _weight(shape)
    pq = ProductQuantized.from_weight(w, subvector=d, codewords=4)
    with torch.no_grad():
        pq.codebooks.mul_(1.01)  # as after fine-tuning
    p = pq.pack(w)
    D = math.prod(shape[1:])
    dd = min(d, D)
    assert p["form"] == "pq" and p["shape"] == list(shape) and p["subvector"] == dd
    assert p["pad"] == -D % dd and p["codebooks"].shape == (-(-D // dd), 4, dd)
    assert p["codebooks"].dtype == np.float32 and p["codes"].dtype == np.uint8
    assert p["codes"].shape == (shape[0], -(-D // dd))
    assert decode_pq(p).tobytes() == pq(w).detach().numpy().tobytes()


def test_pq_uint16_codes_when_more_than_256_codewords():
    w = _weight((300, 4))
    p = ProductQuantized.from_weight(w, subvector=2, codewords=300, iters=2).pack(w)
    assert p["codes"].dtype == np.uint16 and p["codebooks"].shape[1] == 300


def test_pq_codewords_capped_at_rows_and_exact_when_k_equals_rows():
    w = _weight((6, 8))
    pq = ProductQuantized.from_weight(w, subvector=4, codewords=256)
    assert pq.codebooks.shape == (2, 6, 4)
    assert torch.equal(pq(w), w)


def test_kmeans_subspaces_reaches_a_lloyd_fixed_point():
    x = subvectors(_weight((64, 12), seed=3), 3)  # [4, 64, 3]
    cb, codes = kmeans_subspaces(x, 8, iters=100, seed=0)
    for s in range(4):
        dist = torch.cdist(x[s].double(), cb[s].double())
        assert torch.equal(dist.argmin(1), codes[:, s])  # every row at its nearest codeword
        for j in range(8):
            members = x[s][codes[:, s] == j]
            if len(members):  # every used codeword is the mean of its rows
                torch.testing.assert_close(cb[s, j], members.mean(0), atol=1e-6, rtol=0)


def test_lloyd_update_paths_agree():
    # index_add_ (CPU) and one-hot products (accelerators) compute the same means
    x = subvectors(_weight((50, 12), seed=5), 4).double()
    c = x[:, :6].clone()
    codes = torch.randint(0, 5, (3, 50), generator=torch.Generator().manual_seed(0))  # codeword 5 stays empty
    a, b = _means(x, codes, c, onehot=False), _means(x, codes, c, onehot=True)
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
    assert torch.equal(a[:, 5], c[:, 5])
    torch.testing.assert_close(a[0, 2], x[0][codes[0] == 2].mean(0), atol=1e-12, rtol=0)


def test_product_quantize_model_bounds_distinct_subvectors():
    model = make_mlp(seed=1)
    product_quantize(model, subvector=4, codewords=16)
    w = model[0].weight.detach()  # [64, 32]: 8 sub-spaces
    for s in range(8):
        assert torch.unique(w[:, 4 * s : 4 * s + 4], dim=0).shape[0] <= 16
    assert not original(model[0]).requires_grad
    assert isinstance(find(model[3], ProductQuantized), ProductQuantized)


def test_pq_finetuning_keeps_codes_and_trains_codebooks(toy_data):
    model = make_mlp(seed=0)
    product_quantize(model, subvector=4, codewords=8)
    pq = find(model[0], ProductQuantized)
    codes, books = pq.codes.clone(), pq.codebooks.detach().clone()
    fit(model, toy_data, TrainConfig(epochs=1, batch_size=100, lr=0.05), progress=False)
    assert torch.equal(pq.codes, codes) and not torch.equal(pq.codebooks.detach(), books)
    p = pq.pack(original(model[0]))
    assert decode_pq(p).tobytes() == model[0].weight.detach().numpy().tobytes()


# ----------------------------------------------------------------- residual quantization
def test_rq_forward_sums_stages_in_order_by_hand():
    cb = torch.tensor([[[[1.0, 1.0], [2.0, 2.0]]], [[[0.5, -0.5], [0.25, 0.0]]]])  # [T=2, S=1, K=2, d=2]
    codes = torch.tensor([[[1], [0]], [[0], [1]]])  # [T, out=2, S=1]
    rq = ResidualQuantized(cb, codes, (2, 2))
    assert torch.equal(rq(torch.zeros(2, 2)), torch.tensor([[2.5, 1.5], [1.25, 1.0]]))


def test_rq_one_stage_equals_pq():
    w = _weight((20, 9))
    rq = ResidualQuantized.from_weight(w, stages=1, codewords=5, subvector=3, seed=7)
    pq = ProductQuantized.from_weight(w, subvector=3, codewords=5, seed=7)
    assert torch.equal(rq(w), pq(w))


def test_rq_error_decreases_with_stages():
    w = _weight((64, 16), seed=2)
    errs = [float((ResidualQuantized.from_weight(w, stages=t, codewords=8)(w).detach() - w).norm()) for t in (1, 2, 3)]
    assert errs[0] > errs[1] > errs[2]


@pytest.mark.parametrize("d", [None, 3])
def test_rq_pack_decodes_bit_for_bit(d):
    w = _weight((32, 10), seed=4)
    rq = ResidualQuantized.from_weight(w, stages=3, codewords=4, subvector=d)
    with torch.no_grad():
        rq.codebooks.mul_(0.97)
    p = rq.pack(w)
    assert p["form"] == "rq" and len(p["stages"]) == 3 and p["pad"] == (0 if d is None else 2)
    assert p["subvector"] == (10 if d is None else 3)
    assert all(st["codes"].dtype == np.uint8 and st["codebooks"].dtype == np.float32 for st in p["stages"])
    assert decode_rq(p).tobytes() == rq(w).detach().numpy().tobytes()


def test_residual_quantize_model():
    model = make_mlp(seed=5)
    ref = model[3].weight.detach().clone()
    residual_quantize(model, stages=2, codewords=4, layers="3")
    rq = find(model[3], ResidualQuantized)
    assert rq.codebooks.shape == (2, 1, 4, 64) and find(model[0], ResidualQuantized) is None
    assert float((model[3].weight.detach() - ref).norm()) < float(ref.norm())


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize("codewords", [0, 1 << 17, 2.0])
def test_bad_codewords_raise(codewords):
    with pytest.raises(ModelError, match="'codewords' parameter"):
        product_quantize(make_mlp(), codewords=codewords)


def test_bad_subvector_raises():
    with pytest.raises(ModelError, match="'subvector' parameter"):
        product_quantize(make_mlp(), subvector=0)


def test_bad_iters_raise():
    with pytest.raises(ModelError, match="'iters' parameter"):
        product_quantize(make_mlp(), iters=-1)


def test_bad_stages_raise():
    with pytest.raises(ModelError, match="'stages' parameter"):
        residual_quantize(make_mlp(), stages=0)


def test_quantizing_twice_raises():
    model = kmeans(make_mlp(), bits=4)
    with pytest.raises(ModelError, match="already quantized"):
        product_quantize(model)


def test_nan_weight_raises():
    model = nn.Linear(4, 4)
    with torch.no_grad():
        model.weight[1, 1] = float("inf")
    with pytest.raises(ModelError, match="NaN or infinite"):
        residual_quantize(model)


# ----------------------------------------------------------------- compression rates
def test_compression_rate_pq_by_hand():
    # m=4096, n=4096, d=8, k=256: codebooks 32*256*4096 bits, codes 8 * 4096 * 512 bits
    m = n = 4096
    expected = 32 * m * n / (32 * 256 * n + 8 * m * n / 8)
    assert compression_rate_pq(m, n, 8, 256) == pytest.approx(expected, rel=1e-12)
    # d not dividing n: n=10, d=4 -> S=3, padded width 12
    assert compression_rate_pq(100, 10, 4, 16) == pytest.approx(32000 / (32 * 16 * 12 + 4 * 100 * 3), rel=1e-12)


def test_compression_rate_rq_by_hand():
    # Gong: t stages of k codewords on whole rows: 32mn / (t (32kn + log2(k) m))
    assert compression_rate_rq(1000, 500, 16, 2) == pytest.approx(
        32 * 1000 * 500 / (2 * (32 * 16 * 500 + 4 * 1000)), rel=1e-12)
    assert compression_rate_rq(1000, 500, 16, 2, d=500) == compression_rate_rq(1000, 500, 16, 2)
    assert compression_rate_rq(64, 16, 8, 1, d=4) == compression_rate_pq(64, 16, 4, 8)
