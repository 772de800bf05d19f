"""Runtime kernels vs their plain-PyTorch reference twins (decode to dense, then F.linear).

Kernel weights are built the way the runtime gets them: a technique
(:class:`~torchshrink.quantize.SharedWeights`, :class:`~torchshrink.quantize.ProductQuantized`)
packs the weight and ``from_packed`` lays the packed value out for the kernels.

Every kernel path is forced at least once: the sparse batch-1 row-chunk (gather) and
EIE column (zero-skipping) kernels via ``EIE_COST_RATIO``, the batched kernels with a
batch larger than one block, the PQ kernels with sub-space counts that are not
multiples of their block sizes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchshrink.errors import ModelError
from torchshrink.forms import unpack
from torchshrink.quantize import ProductQuantized, SharedWeights
from torchshrink.runtime import (
    PQKernel,
    SharedWeightsKernel,
    pq_matmul,
    reference_pq_matmul,
    reference_shared_matmul,
    shared_matmul,
)
from torchshrink.runtime import shared as sparse_mod

ATOL = 1e-5
RTOL = 1e-4
ALWAYS_ROWS = 0.0  # EIE_COST_RATIO that never picks the column kernel
ALWAYS_COLS = 1e9  # ... that always picks it (unless the input is all zero either way)
LAYOUT = ("chunk_ptr", "chunk_code", "chunk_index", "col_ptr", "col_row", "col_code", "codebook")


def sparse_weight(out_f: int, in_f: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    return w * (torch.rand(out_f, in_f, generator=g) < density)


def shared_packed(w: torch.Tensor, bits: int = 4) -> dict:
    """The "shared" packed value k-means weight sharing makes of ``w`` (zeros stay index 0)."""
    return SharedWeights.from_weight(w, bits).pack(w)


def shared_weight(w: torch.Tensor, bits: int = 4) -> SharedWeightsKernel:
    sw = SharedWeightsKernel.from_packed(shared_packed(w, bits))
    assert sw is not None
    return sw


def pq_packed(w: torch.Tensor, d: int, k: int, iters: int = 4) -> dict:
    return ProductQuantized.from_weight(w, subvector=d, codewords=k, iters=iters).pack(w)


def pq_weight(w: torch.Tensor, d: int, k: int, iters: int = 4) -> PQKernel:
    pw = PQKernel.from_packed(pq_packed(w, d, k, iters))
    assert pw is not None
    return pw


def empty_weight(out_f: int, in_f: int) -> SharedWeightsKernel:
    """An all-zero layer (no nonzero level), as a decoded CSR with no entries gives it."""
    return SharedWeightsKernel.from_csr((out_f, in_f), np.zeros(out_f + 1, np.int64), [], [], np.zeros(0, np.float32))


def inputs(batch: int, in_f: int, kind: str, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_f, generator=g)
    if kind == "relu":
        return torch.relu(x)
    if kind == "zero":
        return torch.zeros(batch, in_f)
    return x


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def assert_same_layout(a: SharedWeightsKernel, b: SharedWeightsKernel) -> None:
    assert a.shape == b.shape and a.bits == b.bits and a.nnz == b.nnz
    for name in LAYOUT:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


# --------------------------------------------------------------------------- sparse


@pytest.mark.parametrize("ratio", [ALWAYS_ROWS, ALWAYS_COLS])
@pytest.mark.parametrize("batch", [1, 3, 70])
@pytest.mark.parametrize("kind", ["dense", "relu", "zero"])
@pytest.mark.parametrize("shape,density", [((7, 13), 0.5), ((1, 1), 1.0), ((64, 200), 0.1), ((130, 77), 0.3)])
def test_sparse_matches_reference(monkeypatch, shape, density, kind, batch, ratio):
    monkeypatch.setattr(sparse_mod, "EIE_COST_RATIO", ratio)
    w = shared_weight(sparse_weight(*shape, density), bits=4)
    x = inputs(batch, shape[1], kind)
    assert_close(shared_matmul(x, w), reference_shared_matmul(x, w))


@pytest.mark.parametrize("ratio", [ALWAYS_ROWS, ALWAYS_COLS])
def test_sparse_empty_rows_columns_and_single_nonzero(monkeypatch, ratio):
    monkeypatch.setattr(sparse_mod, "EIE_COST_RATIO", ratio)
    w = sparse_weight(40, 50, 0.4)
    w[::3] = 0.0  # empty rows
    w[:, 5:20] = 0.0  # empty columns
    one = torch.zeros(9, 11)
    one[4, 7] = -2.5
    for weight in (w, one):
        sw = shared_weight(weight)
        assert np.array_equal(sw.to_dense() != 0, weight.numpy() != 0)  # the empty rows/columns stay empty
        for batch in (1, 5):
            x = inputs(batch, weight.shape[1], "dense")
            assert_close(shared_matmul(x, sw), reference_shared_matmul(x, sw))
    x = torch.zeros(11)
    x[7] = 2.0
    got = shared_matmul(x, shared_weight(one))
    assert got.tolist() == [0.0] * 4 + [-5.0] + [0.0] * 4


@pytest.mark.parametrize("ratio", [ALWAYS_ROWS, ALWAYS_COLS])
@pytest.mark.parametrize("batch", [1, 3, 70])
def test_sparse_all_zero_layer_gives_zeros_and_bias(monkeypatch, ratio, batch):
    monkeypatch.setattr(sparse_mod, "EIE_COST_RATIO", ratio)
    w = empty_weight(6, 9)
    assert w.nnz == 0 and w.codebook.size == 0
    assert not w.to_dense().any()
    bias = torch.arange(6.0)
    for x in (inputs(batch, 9, "dense"), inputs(batch, 9, "zero"), torch.randn(9)):
        assert_close(shared_matmul(x, w), reference_shared_matmul(x, w))
        got = shared_matmul(x, w, bias)
        assert torch.equal(got, bias.expand_as(got))


def test_sparse_input_layouts_dtypes_and_bias():
    w = shared_weight(sparse_weight(33, 21, 0.3), bits=3)
    bias = torch.randn(33)
    x = torch.randn(21, 6).T  # non-contiguous (transposed view)
    assert not x.is_contiguous()
    assert_close(shared_matmul(x, w, bias), reference_shared_matmul(x, w, bias))
    v = torch.randn(21)
    assert shared_matmul(v, w).shape == (33,)
    x3 = torch.randn(2, 3, 21)
    assert_close(shared_matmul(x3, w), reference_shared_matmul(x3.reshape(6, 21), w).reshape(2, 3, 33))
    x64 = torch.randn(5, 21, dtype=torch.float64)
    got = shared_matmul(x64, w)
    assert got.dtype == torch.float64
    want = torch.from_numpy(w.to_dense()).double() @ x64.T
    torch.testing.assert_close(got, want.T, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("shape,density", [((30, 40), 0.25), ((12, 3, 3, 3), 0.5), ((5, 7), 1.0)])
def test_sparse_from_packed_decodes_exactly_like_the_packed_form(shape, density, bits):
    g = torch.Generator().manual_seed(bits)
    weight = torch.randn(*shape, generator=g) * (torch.rand(*shape, generator=g) < density)
    packed = shared_packed(weight, bits)
    assert packed["codebook"][0] == 0.0
    w = SharedWeightsKernel.from_packed(packed)
    want = unpack(packed).reshape(shape[0], -1)  # a conv weight runs as (out, in * kh * kw)
    assert w.shape == want.shape
    assert np.array_equal(w.to_dense(), want)  # bit for bit: same codebook values, no arithmetic
    assert np.array_equal(w.codebook, packed["codebook"][1:])
    assert w.nnz == np.count_nonzero(packed["indices"]) == np.count_nonzero(weight.numpy())
    assert 1 <= w.bits <= bits and w.codebook.size <= 1 << w.bits


def test_sparse_pruned_zeros_and_layout_bytes():
    weight = sparse_weight(30, 40, 0.25)
    packed = shared_packed(weight, bits=2)
    w = SharedWeightsKernel.from_packed(packed)
    nz = weight.numpy() != 0
    decoded = w.to_dense()
    assert w.codebook.size == 3 and w.bits == 2 and not np.any(w.codebook == 0)
    assert np.array_equal(decoded != 0, nz)  # exact zeros stay pruned, nothing else becomes zero
    assert np.array_equal(decoded[nz], w.codebook[packed["indices"][nz].astype(np.int64) - 1])
    assert w.nnz == nz.sum() and w.col_row.dtype == np.uint16 and w.chunk_code.dtype == np.uint8
    assert w.chunk_index.dtype == np.uint16 and w.col_code.dtype == np.uint8
    assert w.nbytes_rows == w.chunk_ptr.nbytes + w.chunk_code.nbytes + w.chunk_index.nbytes + w.codebook.nbytes
    assert w.weight_bytes == w.nbytes_rows
    assert w.nbytes_cols == w.col_ptr.nbytes + w.col_row.nbytes + w.col_code.nbytes + w.codebook.nbytes
    assert w.chunk_index.size % 8 == 0 and w.chunk_index.size >= w.nnz
    assert all(not getattr(w, name).flags.writeable for name in LAYOUT)


def test_sparse_from_csr_matches_from_packed():
    weight = sparse_weight(12, 17, 0.3)
    packed = shared_packed(weight, bits=4)
    ref = SharedWeightsKernel.from_packed(packed)
    idx = packed["indices"].astype(np.int64)
    rows, cols = np.nonzero(idx)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=12))])
    w = SharedWeightsKernel.from_csr((12, 17), indptr, cols, idx[rows, cols] - 1, packed["codebook"][1:], bits=4)
    assert_same_layout(w, ref)
    assert np.array_equal(w.to_dense(), unpack(packed))


def test_sparse_matmul_method_is_the_kernel():
    w = shared_weight(sparse_weight(20, 30, 0.3))
    x, bias = torch.randn(4, 30), torch.randn(20)
    assert torch.equal(w.matmul(x, bias), shared_matmul(x, w, bias))
    assert torch.equal(w.matmul(x[0]), shared_matmul(x[0], w))


def test_sparse_from_packed_takes_256_levels_and_no_more():
    g = torch.Generator().manual_seed(5)
    for levels, fits in ((256, True), (257, False)):
        indices = torch.randint(0, levels + 1, (20, 40), generator=g)
        indices.view(-1)[:levels] = torch.arange(1, levels + 1)  # every level used
        codebook = torch.linspace(1.0, 2.0, levels)
        weight = torch.zeros(20, 40)
        packed = SharedWeights(codebook, indices, bits=9).pack(weight)
        w = SharedWeightsKernel.from_packed(packed)
        if fits:
            assert w.bits == 8 and w.codebook.size == 256
            assert np.array_equal(w.to_dense(), unpack(packed))
            x = inputs(3, 40, "dense")
            assert_close(shared_matmul(x, w), reference_shared_matmul(x, w))
        else:
            assert w is None
    many = sparse_weight(40, 50, 0.6)  # 1200 distinct nonzeros, 9 bits: 511 levels
    packed = shared_packed(many, bits=9)
    assert packed["codebook"].size - 1 == 511
    assert SharedWeightsKernel.from_packed(packed) is None


def test_sparse_from_packed_declines_what_the_kernels_cannot_run():
    """A 0 among the shared levels, or a first level that is not the pruned 0: no kernel (the
    loaded model keeps the decoded dense layer, so both load paths agree)."""
    packed = SharedWeights(torch.tensor([0.0, 0.5]), torch.tensor([[1, 2], [0, 1]]), bits=2).pack(torch.zeros(2, 2))
    assert SharedWeightsKernel.from_packed(packed) is None
    shifted = {**packed, "codebook": np.array([0.25, 0.5, 1.0], np.float32)}
    assert SharedWeightsKernel.from_packed(shifted) is None


def test_sparse_shape_mismatch_names_both_shapes():
    w = shared_weight(sparse_weight(8, 5, 0.5))
    with pytest.raises(ModelError, match=r"\(3, 6\).*\(8, 5\)"):
        shared_matmul(torch.randn(3, 6), w)


def test_sparse_rejects_integer_input():
    w = shared_weight(sparse_weight(8, 5, 0.5))
    with pytest.raises(ModelError, match="floating-point"):
        shared_matmul(torch.ones(2, 5, dtype=torch.int64), w)


def test_sparse_rejects_bad_bias():
    w = shared_weight(sparse_weight(8, 5, 0.5))
    with pytest.raises(ModelError, match=r"bias must be a tensor of shape \(8,\)"):
        shared_matmul(torch.randn(5), w, torch.randn(5))


@pytest.mark.parametrize("bits", [0, 9, 2.0, True])
def test_sparse_rejects_bad_bits(bits):
    with pytest.raises(ModelError, match="'bits' parameter"):
        SharedWeightsKernel.from_csr((2, 2), [0, 1, 1], [0], [0], np.array([1.0]), bits=bits)


@pytest.mark.parametrize(
    "codebook,match",
    [
        (np.array([0.5, 0.0]), "nonzero"),
        (np.arange(1.0, 6.0), "at most 2\\*\\*bits = 4"),
        (np.array([np.nan]), "finite"),
    ],
)
def test_sparse_rejects_bad_codebook(codebook, match):
    with pytest.raises(ModelError, match=match):
        SharedWeightsKernel.from_csr((2, 2), [0, 0, 0], [], [], codebook, bits=2)


def test_sparse_rejects_bad_shape():
    with pytest.raises(ModelError, match=r"shape must be \(out_features, in_features\)"):
        SharedWeightsKernel.from_csr((3,), [0, 0, 0, 0], [], [], np.array([1.0]))


@pytest.mark.parametrize(
    "indptr,indices,codes,match",
    [
        ([0, 2], [0, 1], [0, 0], "indptr"),  # one row too few
        ([0, 1, 1], [0], [1], "codes must hold"),  # code past the codebook
        ([0, 1, 1], [3], [0], "column indices"),
    ],
)
def test_sparse_rejects_bad_csr(indptr, indices, codes, match):
    with pytest.raises(ModelError, match=match):
        SharedWeightsKernel.from_csr((2, 3), indptr, indices, codes, np.array([1.0]))


def test_sparse_rejects_duplicate_csr_entries():
    with pytest.raises(ModelError, match="duplicate"):
        SharedWeightsKernel.from_csr((1, 3), [0, 2], [1, 1], [0, 0], np.array([1.0]))


# --------------------------------------------------------------------------- PQ


def dense_weight(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batch", [1, 3, 70])
@pytest.mark.parametrize(
    "out_f,in_f,d,k,n_sub",
    # n_sub not a multiple of the kernels' group of 8 (but 70 spans several), padded last
    # sub-spaces (13 = 4*4 - 3, 197 = 25*8 - 3), K = 256 (the uint8 limit), d = 1, K = 2
    [(7, 13, 4, 16, 4), (5, 8, 8, 4, 1), (300, 280, 4, 256, 70), (40, 197, 8, 16, 25), (3, 33, 1, 2, 33)],
)
def test_pq_matches_reference(out_f, in_f, d, k, n_sub, batch):
    w = pq_weight(dense_weight(out_f, in_f), d, k, iters=2)
    assert w.codebooks.shape == (n_sub, min(k, out_f), d) and w.shape == (out_f, in_f)
    for kind in ("dense", "relu", "zero"):
        x = inputs(batch, w.in_features, kind)
        assert_close(pq_matmul(x, w), reference_pq_matmul(x, w))


def test_pq_input_layouts_dtypes_and_bias():
    w = pq_weight(dense_weight(40, 22), d=4, k=32)
    assert w.codebooks.shape == (6, 32, 4) and w.in_features == 22
    bias = torch.randn(40)
    x = torch.randn(22, 4).T
    assert_close(pq_matmul(x, w, bias), reference_pq_matmul(x, w, bias))
    assert pq_matmul(torch.randn(22), w).shape == (40,)
    x64 = torch.randn(3, 22, dtype=torch.float64)
    got = pq_matmul(x64, w)
    want = x64 @ torch.from_numpy(w.to_dense()).double().T
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape,d", [((6, 5), 2), ((12, 3, 3, 3), 5), ((8, 6), 6), ((8, 6), 50)])
def test_pq_from_packed_decodes_exactly_like_the_packed_form(shape, d):
    weight = torch.randn(*shape, generator=torch.Generator().manual_seed(7))
    packed = ProductQuantized.from_weight(weight, subvector=d, codewords=4, iters=3).pack(weight)
    w = PQKernel.from_packed(packed)
    n_in = int(np.prod(shape[1:]))
    assert w.shape == (shape[0], n_in) and w.subvector == packed["subvector"] and w.codewords == 4
    assert np.array_equal(w.codebooks, packed["codebooks"]) and np.array_equal(w.codes, packed["codes"])
    dense = w.to_dense()
    assert np.array_equal(dense, unpack(packed).reshape(shape[0], n_in))
    n_sub = w.codebooks.shape[0]
    for o in range(shape[0]):
        row = np.concatenate([w.codebooks[s, w.codes[o, s]] for s in range(n_sub)])
        assert np.array_equal(dense[o], row[:n_in])
    assert w.weight_bytes == w.nbytes == w.codebooks_t.nbytes + w.codes_t.nbytes


def test_pq_is_exact_with_one_codeword_per_row():
    weight = dense_weight(16, 10, seed=3)
    w = pq_weight(weight, d=4, k=16)
    assert w.codebooks.shape == (3, 16, 4) and w.codes.shape == (16, 3) and w.in_features == 10
    np.testing.assert_array_equal(w.to_dense(), weight.numpy())
    x = inputs(5, 10, "dense")
    assert_close(pq_matmul(x, w), x @ weight.T)


def test_pq_kernel_error_falls_with_lloyd_iterations():
    weight = dense_weight(200, 32, seed=4)
    x = inputs(8, 32, "dense")
    exact = x @ weight.T
    errs = []
    for iters in (0, 8):
        packed = pq_packed(weight, d=4, k=16, iters=iters)
        w = PQKernel.from_packed(packed)
        assert np.array_equal(w.to_dense(), unpack(packed))
        errs.append(torch.square(pq_matmul(x, w) - exact).mean().item())
    assert errs[1] < errs[0]


def test_pq_matmul_method_is_the_kernel():
    w = pq_weight(dense_weight(20, 24), d=4, k=8)
    x, bias = torch.randn(4, 24), torch.randn(20)
    assert torch.equal(w.matmul(x, bias), pq_matmul(x, w, bias))
    assert torch.equal(w.matmul(x[0]), pq_matmul(x[0], w))


def test_pq_from_packed_takes_256_codewords_and_no_more():
    weight = dense_weight(300, 4, seed=6)
    for k, fits in ((256, True), (257, False)):
        packed = pq_packed(weight, d=2, k=k, iters=2)
        assert packed["codebooks"].shape[1] == k
        w = PQKernel.from_packed(packed)
        if fits:
            assert packed["codes"].dtype == np.uint8 and w.codes.dtype == np.uint8
            assert np.array_equal(w.to_dense(), unpack(packed))
        else:
            assert packed["codes"].dtype == np.uint16 and w is None


def test_pq_shape_mismatch_names_both_shapes():
    w = pq_weight(dense_weight(9, 8), d=4, k=4)
    with pytest.raises(ModelError, match=r"\(2, 7\).*\(9, 8\)"):
        pq_matmul(torch.randn(2, 7), w)


def test_pq_rejects_codes_out_of_range():
    with pytest.raises(ModelError, match=r"codes must lie in \[0, K=4\)"):
        PQKernel(np.ones((2, 4, 3), np.float32), np.full((5, 2), 4))


def test_pq_rejects_too_many_codewords():
    with pytest.raises(ModelError, match="K <= 256"):
        PQKernel(np.ones((1, 257, 2), np.float32), np.zeros((3, 1), np.uint8))


def test_pq_rejects_in_features_outside_last_subspace():
    with pytest.raises(ModelError, match="'in_features'"):
        PQKernel(np.ones((2, 4, 3), np.float32), np.zeros((5, 2), np.uint8), in_features=3)


# --------------------------------------------------------------------------- fp32 sparse (CSR)

from torchshrink.runtime import _common  # noqa: E402
from torchshrink.runtime.sparse import SparseKernel, reference_sparse_matmul, sparse_matmul  # noqa: E402


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("batch", [1, 5, 70])
@pytest.mark.parametrize("shape,density", [((7, 13), 0.5), ((1, 1), 1.0), ((64, 200), 0.1), ((130, 77), 0.0)])
def test_fp32_sparse_matches_reference(monkeypatch, shape, density, batch, parallel):
    monkeypatch.setattr(_common, "PARALLEL_MIN_WORK", 0 if parallel else 1 << 62)  # thread pool or serial twin
    monkeypatch.setattr(_common, "oversubscribed", lambda: False)
    w = sparse_weight(*shape, density)
    k = SparseKernel.from_dense(w.numpy(), max_density=1.0)
    assert np.array_equal(k.to_dense(), w.numpy()) and k.nnz == int(torch.count_nonzero(w))
    x = inputs(batch, shape[1], "relu")
    bias = torch.randn(shape[0])
    assert_close(sparse_matmul(x, k, bias), reference_sparse_matmul(x, k, bias))
    assert_close(k.matmul(x), torch.nn.functional.linear(x, w))


def test_fp32_sparse_declines_dense_and_non_float32():
    w = sparse_weight(8, 8, 0.9)
    assert SparseKernel.from_dense(w.numpy()) is None  # denser than MAX_DENSITY: no gain
    assert SparseKernel.from_dense(w.numpy().astype(np.float16), max_density=1.0) is None
    bad = sparse_weight(8, 8, 0.1).numpy()
    bad[0, 0] = np.inf
    assert SparseKernel.from_dense(bad) is None
    k = SparseKernel.from_dense(sparse_weight(8, 8, 0.2).numpy())
    assert k.weight_bytes == 9 * 8 + k.nnz * (2 + 4)  # int64 pointers, uint16 columns, fp32 values
    with pytest.raises(ModelError, match="last dimension must be 8"):
        sparse_matmul(torch.randn(2, 7), k)


def test_oversubscribed_reads_the_load_average(monkeypatch):
    monkeypatch.setattr(_common, "_load_seen", [-1e9, False])
    monkeypatch.setattr(_common.os, "getloadavg", lambda: (99.0, 0.0, 0.0))
    assert _common.oversubscribed() is True
    monkeypatch.setattr(_common.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert _common.oversubscribed() is True  # cached for LOAD_CHECK_S
    monkeypatch.setattr(_common, "_load_seen", [-1e9, True])
    assert _common.oversubscribed() is False


def test_serial_twin_is_the_same_kernel():
    twin = _common.serial(sparse_mod.kern.rows_matvec)
    assert twin is _common.serial(sparse_mod.kern.rows_matvec) and twin.py_func.__name__ == "rows_matvec_serial"
    w = shared_weight(sparse_weight(20, 30, 0.3))
    x = inputs(1, 30, "dense")[0].numpy()
    y1, y2 = np.empty(20, np.float32), np.empty(20, np.float32)
    args = (x, w.chunk_ptr, w.chunk_code, w.chunk_index, w.codebook)
    twin(*args, y1, 1)
    sparse_mod.kern.rows_matvec(*args, y2, 1)
    np.testing.assert_allclose(y1, y2, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------- direct sparse conv

from torchshrink.runtime.modules import CompressedConv2d  # noqa: E402


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (1, 2, 1), (1, 1, (2, 1)), (2, 1, 1), ((1, 2), (2, 0), (2, 1))])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", ["shared", "fp32"])
def test_direct_sparse_conv_matches_conv2d(monkeypatch, kind, batch, stride, padding, dilation, parallel):
    monkeypatch.setattr(_common, "PARALLEL_MIN_WORK", 0 if parallel else 1 << 62)
    monkeypatch.setattr(_common, "oversubscribed", lambda: False)
    torch.manual_seed(7)
    conv = torch.nn.Conv2d(3, 5, (3, 2), stride=stride, padding=padding, dilation=dilation)
    w = sparse_weight(5, 3 * 3 * 2, 0.3)
    kw = shared_weight(w) if kind == "shared" else SparseKernel.from_dense(w.numpy())
    conv.weight.data = torch.from_numpy(kw.to_dense()).reshape(conv.weight.shape)
    fast = CompressedConv2d(conv, kw, conv.bias)
    assert fast.direct
    x = torch.randn(batch, 3, 9, 8)
    want = conv(x).detach()
    assert_close(fast.run_kernel(x), want)
    assert_close(fast.run_kernel(x.double()).float(), want)  # other float dtypes: computed in fp32, cast back
    assert fast.weight_bytes == 8 * (5 + 1) + 8 * kw.nnz
    with pytest.raises(ModelError, match=r"expects input \(batch, 3, H, W\)"):
        fast.run_kernel(torch.randn(1, 2, 9, 8))
