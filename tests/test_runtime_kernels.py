"""Runtime kernels vs their plain-PyTorch reference twins (decode to dense, then F.linear).

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
from torchshrink.runtime import (
    PQWeight,
    SparseSharedWeight,
    pq_matmul,
    reference_pq_matmul,
    reference_sparse_shared_matmul,
    sparse_shared_matmul,
)
from torchshrink.runtime import sparse as sparse_mod

ATOL = 1e-5
RTOL = 1e-4
ALWAYS_ROWS = 0.0  # EIE_COST_RATIO that never picks the column kernel
ALWAYS_COLS = 1e9  # ... that always picks it (unless the input is all zero either way)


def sparse_weight(out_f: int, in_f: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    return w * (torch.rand(out_f, in_f, generator=g) < density)


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


# --------------------------------------------------------------------------- sparse


@pytest.mark.parametrize("ratio", [ALWAYS_ROWS, ALWAYS_COLS])
@pytest.mark.parametrize("batch", [1, 3, 70])
@pytest.mark.parametrize("kind", ["dense", "relu", "zero"])
@pytest.mark.parametrize(
    "shape,density", [((7, 13), 0.5), ((1, 1), 1.0), ((64, 200), 0.1), ((130, 77), 0.3), ((20, 30), 0.0)]
)
def test_sparse_matches_reference(monkeypatch, shape, density, kind, batch, ratio):
    monkeypatch.setattr(sparse_mod, "EIE_COST_RATIO", ratio)
    w = SparseSharedWeight.from_dense(sparse_weight(*shape, density), bits=4)
    x = inputs(batch, shape[1], kind)
    assert_close(sparse_shared_matmul(x, w), reference_sparse_shared_matmul(x, w))


@pytest.mark.parametrize("ratio", [ALWAYS_ROWS, ALWAYS_COLS])
def test_sparse_empty_rows_columns_and_single_nonzero(monkeypatch, ratio):
    monkeypatch.setattr(sparse_mod, "EIE_COST_RATIO", ratio)
    w = sparse_weight(40, 50, 0.4)
    w[::3] = 0.0  # empty rows
    w[:, 5:20] = 0.0  # empty columns
    one = torch.zeros(9, 11)
    one[4, 7] = -2.5
    for weight in (w, one):
        sw = SparseSharedWeight.from_dense(weight)
        for batch in (1, 5):
            x = inputs(batch, weight.shape[1], "dense")
            assert_close(sparse_shared_matmul(x, sw), reference_sparse_shared_matmul(x, sw))
    x = torch.zeros(11)
    x[7] = 2.0
    got = sparse_shared_matmul(x, SparseSharedWeight.from_dense(one))
    assert got.tolist() == [0.0] * 4 + [-5.0] + [0.0] * 4


def test_sparse_all_zero_layer_gives_zeros_and_bias():
    w = SparseSharedWeight.from_dense(torch.zeros(6, 9))
    assert w.nnz == 0 and w.codebook.size == 0
    bias = torch.arange(6.0)
    for x in (torch.randn(9), torch.randn(4, 9)):
        got = sparse_shared_matmul(x, w, bias)
        assert torch.equal(got, bias.expand_as(got))


def test_sparse_input_layouts_dtypes_and_bias():
    w = SparseSharedWeight.from_dense(sparse_weight(33, 21, 0.3), bits=3)
    bias = torch.randn(33)
    x = torch.randn(21, 6).T  # non-contiguous (transposed view)
    assert not x.is_contiguous()
    assert_close(sparse_shared_matmul(x, w, bias), reference_sparse_shared_matmul(x, w, bias))
    v = torch.randn(21)
    assert sparse_shared_matmul(v, w).shape == (33,)
    x3 = torch.randn(2, 3, 21)
    assert_close(sparse_shared_matmul(x3, w), reference_sparse_shared_matmul(x3.reshape(6, 21), w).reshape(2, 3, 33))
    x64 = torch.randn(5, 21, dtype=torch.float64)
    got = sparse_shared_matmul(x64, w)
    assert got.dtype == torch.float64
    want = torch.from_numpy(w.to_dense()).double() @ x64.T
    torch.testing.assert_close(got, want.T, atol=1e-4, rtol=1e-4)


def test_sparse_codebook_assignment_and_layout_bytes():
    weight = sparse_weight(30, 40, 0.25)
    cb = np.array([-1.0, -0.25, 0.25, 1.0], np.float32)
    w = SparseSharedWeight.from_dense(weight, bits=2, codebook=cb)
    dense = weight.numpy()
    nz = dense != 0
    expected = cb[np.abs(dense[nz][:, None] - cb[None, :]).argmin(1)]
    decoded = w.to_dense()
    assert np.array_equal(decoded != 0, nz) and np.array_equal(decoded[nz], expected)
    assert w.nnz == nz.sum() and w.col_row.dtype == np.uint16 and w.chunk_code.dtype == np.uint8
    assert w.nbytes_rows == w.chunk_ptr.nbytes + w.chunk_code.nbytes + w.chunk_index.nbytes + cb.nbytes
    assert w.chunk_index.size % 8 == 0 and w.chunk_index.size >= w.nnz


def test_sparse_linear_codebook_has_no_zero_and_bounded_error():
    weight = sparse_weight(50, 60, 0.3)
    w = SparseSharedWeight.from_dense(weight, bits=4)
    assert w.codebook.size <= 15 and not np.any(w.codebook == 0)
    nz = weight.numpy() != 0
    step = (weight[weight != 0].max() - weight[weight != 0].min()).item() / 14
    err = np.abs(w.to_dense()[nz] - weight.numpy()[nz]).max()
    assert err <= step / 2 + 1e-6


def test_sparse_from_csr_matches_from_dense():
    weight = sparse_weight(12, 17, 0.3)
    ref = SparseSharedWeight.from_dense(weight, bits=4)
    dense_codes = np.zeros(weight.shape, np.int64)
    cols = np.repeat(np.arange(17), np.diff(ref.col_ptr))
    dense_codes[ref.col_row.astype(np.int64), cols] = ref.col_code
    rows, cols = np.nonzero(weight.numpy())
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=12))])
    w = SparseSharedWeight.from_csr((12, 17), indptr, cols, dense_codes[rows, cols], ref.codebook, bits=4)
    assert np.array_equal(w.to_dense(), ref.to_dense())
    assert np.array_equal(w.chunk_index, ref.chunk_index)


def test_sparse_shape_mismatch_names_both_shapes():
    w = SparseSharedWeight.from_dense(sparse_weight(8, 5, 0.5))
    with pytest.raises(ModelError, match=r"\(3, 6\).*\(8, 5\)"):
        sparse_shared_matmul(torch.randn(3, 6), w)


def test_sparse_rejects_integer_input():
    w = SparseSharedWeight.from_dense(sparse_weight(8, 5, 0.5))
    with pytest.raises(ModelError, match="floating-point"):
        sparse_shared_matmul(torch.ones(2, 5, dtype=torch.int64), w)


def test_sparse_rejects_bad_bias():
    w = SparseSharedWeight.from_dense(sparse_weight(8, 5, 0.5))
    with pytest.raises(ModelError, match=r"bias must be a tensor of shape \(8,\)"):
        sparse_shared_matmul(torch.randn(5), w, torch.randn(5))


@pytest.mark.parametrize("bits", [0, 9, 2.0, True])
def test_sparse_rejects_bad_bits(bits):
    with pytest.raises(ModelError, match="'bits' parameter"):
        SparseSharedWeight.from_dense(torch.ones(2, 2), bits=bits)


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
        SparseSharedWeight.from_dense(torch.ones(2, 2), bits=2, codebook=codebook)


def test_sparse_rejects_bad_weight():
    with pytest.raises(ModelError, match="2-D weight"):
        SparseSharedWeight.from_dense(torch.ones(3))


def test_sparse_rejects_duplicate_csr_entries():
    with pytest.raises(ModelError, match="duplicate"):
        SparseSharedWeight.from_csr((1, 3), [0, 2], [1, 1], [0, 0], np.array([1.0]))


# --------------------------------------------------------------------------- PQ


def random_pq(out_f: int, n_sub: int, k: int, d: int, in_f: int | None = None, seed: int = 0) -> PQWeight:
    rng = np.random.default_rng(seed)
    codebooks = rng.standard_normal((n_sub, k, d)).astype(np.float32)
    codes = rng.integers(0, k, (out_f, n_sub)).astype(np.uint8)
    return PQWeight(codebooks, codes, in_features=in_f)


@pytest.mark.parametrize("batch", [1, 3, 70])
@pytest.mark.parametrize(
    "out_f,n_sub,k,d,in_f",
    [(7, 4, 16, 4, 13), (5, 1, 4, 8, None), (64, 70, 256, 4, None), (40, 25, 16, 8, 197), (3, 33, 2, 1, None)],
)
def test_pq_matches_reference(out_f, n_sub, k, d, in_f, batch):
    w = random_pq(out_f, n_sub, k, d, in_f)
    for kind in ("dense", "relu", "zero"):
        x = inputs(batch, w.in_features, kind)
        assert_close(pq_matmul(x, w), reference_pq_matmul(x, w))


def test_pq_input_layouts_dtypes_and_bias():
    w = random_pq(11, 6, 32, 4, in_f=22)
    bias = torch.randn(11)
    x = torch.randn(22, 4).T
    assert_close(pq_matmul(x, w, bias), reference_pq_matmul(x, w, bias))
    assert pq_matmul(torch.randn(22), w).shape == (11,)
    x64 = torch.randn(3, 22, dtype=torch.float64)
    got = pq_matmul(x64, w)
    want = x64 @ torch.from_numpy(w.to_dense()).double().T
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_pq_decoding_matches_codebooks():
    w = random_pq(6, 3, 8, 2, in_f=5)
    dense = w.to_dense()
    assert dense.shape == (6, 5) == w.shape
    for o in range(6):
        row = np.concatenate([w.codebooks[s, w.codes[o, s]] for s in range(3)])
        assert np.array_equal(dense[o], row[:5])


def test_pq_from_dense_is_exact_with_one_codeword_per_row():
    weight = torch.randn(16, 10, generator=torch.Generator().manual_seed(3))
    w = PQWeight.from_dense(weight, subvector=4, codewords=16)
    assert w.codebooks.shape == (3, 16, 4) and w.codes.shape == (16, 3) and w.in_features == 10
    np.testing.assert_array_equal(w.to_dense(), weight.numpy())


def test_pq_from_dense_reduces_error_with_iterations():
    weight = torch.randn(200, 32, generator=torch.Generator().manual_seed(4))
    fits = [PQWeight.from_dense(weight, subvector=4, codewords=16, iterations=i) for i in (0, 8)]
    errs = [np.square(w.to_dense() - weight.numpy()).mean() for w in fits]
    assert errs[1] < errs[0]


def test_pq_shape_mismatch_names_both_shapes():
    w = random_pq(9, 2, 4, 4)
    with pytest.raises(ModelError, match=r"\(2, 7\).*\(9, 8\)"):
        pq_matmul(torch.randn(2, 7), w)


@pytest.mark.parametrize(
    "kwargs,match", [({"subvector": 0}, "'subvector'"), ({"subvector": 4, "codewords": 257}, "'codewords'")]
)
def test_pq_from_dense_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ModelError, match=match):
        PQWeight.from_dense(torch.ones(4, 8), **kwargs)


def test_pq_rejects_codes_out_of_range():
    with pytest.raises(ModelError, match=r"codes must lie in \[0, K=4\)"):
        PQWeight(np.ones((2, 4, 3), np.float32), np.full((5, 2), 4))


def test_pq_rejects_too_many_codewords():
    with pytest.raises(ModelError, match="K <= 256"):
        PQWeight(np.ones((1, 257, 2), np.float32), np.zeros((3, 1), np.uint8))


def test_pq_rejects_in_features_outside_last_subspace():
    with pytest.raises(ModelError, match="'in_features'"):
        PQWeight(np.ones((2, 4, 3), np.float32), np.zeros((5, 2), np.uint8), in_features=3)
