"""The .tsk file: exact round trips for every codec, packed forms, sizes, and bad input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from conftest import resign
from torch import nn

import torchshrink as ts
from torchshrink.errors import TskFormatError
from torchshrink.format import inspect_rows, load, read_tsk, save
from torchshrink.forms import unpack
from torchshrink.measure import state_dict_bytes
from torchshrink.core.transform import WeightTransform, attach, effective_state_dict


# --- helpers ------------------------------------------------------------------------------


def small_net(seed: int = 0) -> nn.Module:
    """Linear + conv + batch norm (int buffer), with some exact zeros and a -0.0."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    with torch.no_grad():
        w = net[3].weight
        w[w.abs() < 0.08] = 0.0
        w[0, 0] = -0.0
        net[1].running_mean.normal_()
        net[1].num_batches_tracked.fill_(7)
    return net


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def record(doc: dict, name: str) -> dict:
    return next(r for r in doc["tensors"] if r["name"] == name)


class FakeShared(WeightTransform):
    """Weight sharing with a fixed codebook: W = codebook[indices] (index 0 = 0.0)."""

    def __init__(self, latent: torch.Tensor, k: int = 16, keep: float = 0.25) -> None:
        super().__init__()
        lo, hi = float(latent.min()), float(latent.max())
        codebook = torch.cat([torch.zeros(1), torch.linspace(lo, hi, k - 1)])
        idx = (latent.reshape(-1, 1) - codebook[1:]).abs().argmin(1) + 1
        idx[latent.reshape(-1).abs() < latent.abs().quantile(1 - keep)] = 0
        self.register_buffer("codebook", codebook)
        self.register_buffer("indices", idx.reshape(latent.shape).to(torch.uint8))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.codebook[self.indices.long()]

    def pack(self, latent: torch.Tensor) -> dict:
        return {"form": "shared", "shape": list(self.indices.shape), "codebook": self.codebook.numpy(),
                "indices": self.indices.numpy()}


class FakeQuantized(WeightTransform):
    """PQ (one stage) or RQ (several) along the flattened input dimension, as forms.py documents."""

    def __init__(self, shape: tuple[int, ...], d: int, ks: list[int], seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.shape, self.d = shape, d
        n_in = int(np.prod(shape[1:]))
        self.pad = (-n_in) % d
        n_sub = (n_in + self.pad) // d
        self.cbs = [torch.randn(n_sub, k, d, generator=g) for k in ks]
        self.codes = [torch.randint(0, k, (shape[0], n_sub), generator=g).to(torch.uint8) for k in ks]

    def _stage(self, t: int) -> torch.Tensor:
        n_sub = self.cbs[t].shape[0]
        return self.cbs[t][torch.arange(n_sub)[None, :], self.codes[t].long()].reshape(self.shape[0], -1)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        acc = self._stage(0)
        for t in range(1, len(self.cbs)):
            acc = acc + self._stage(t)
        return acc[:, : acc.shape[1] - self.pad].reshape(self.shape)

    def pack(self, latent: torch.Tensor) -> dict:
        stages = [{"codebooks": c.numpy(), "codes": k.numpy()} for c, k in zip(self.cbs, self.codes)]
        base = {"shape": list(self.shape), "subvector": self.d, "pad": self.pad}
        if len(stages) == 1:
            return {"form": "pq", **base, **stages[0]}
        return {"form": "rq", **base, "stages": stages}


@pytest.fixture
def pruned_lenet() -> nn.Module:
    torch.manual_seed(0)
    model = ts.models.build_model("lenet300", (1, 28, 28), 10)
    ts.prune.magnitude(model, sparsity={"fc1": 0.92, "fc2": 0.92, "fc3": 0.92})
    return model


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codecs", "huffman", "index_bits", "weight_codec"),
    [
        (None, None, None, None),
        ({"*": "dense"}, None, None, "dense"),
        ({"*.weight": "sparse"}, False, None, "sparse("),
        ({"*.weight": "sparse"}, True, None, "+huffman"),
        ({"*.weight": "sparse"}, None, 5, "sparse(5b)"),
        ({"*.weight": "sparse"}, True, {"3.*": 8}, "sparse(8b)+huffman"),
    ],
)
def test_round_trip_is_exact_for_every_codec(tmp_path, codecs, huffman, index_bits, weight_codec) -> None:
    net = small_net()
    info = save(net, tmp_path / "m.tsk", codecs=codecs, huffman=huffman, index_bits=index_bits)
    if weight_codec:
        assert weight_codec in info.codecs["3.weight"]
    assert info.codecs["1.num_batches_tracked"] == "raw:int64"
    loaded = load(tmp_path / "m.tsk", model=small_net(seed=1), dense=True)
    assert_same_state(effective_state_dict(net), loaded.state_dict())
    assert info.file_bytes == (tmp_path / "m.tsk").stat().st_size


def test_dense_keeps_the_sign_of_zero_and_sparse_stores_it_as_plus_zero(tmp_path) -> None:
    net = small_net()
    save(net, tmp_path / "d.tsk", codecs={"*": "dense"})
    save(net, tmp_path / "s.tsk", codecs={"3.weight": "sparse"})
    assert torch.signbit(read_tsk(tmp_path / "d.tsk").tensor("3.weight")[0, 0])
    assert not torch.signbit(read_tsk(tmp_path / "s.tsk").tensor("3.weight")[0, 0])


def test_fp16_is_lossy_only_when_forced(tmp_path) -> None:
    net = small_net()
    info = save(net, tmp_path / "h.tsk", codecs={"0.weight": "fp16"})
    f = read_tsk(tmp_path / "h.tsk")
    assert info.codecs["0.weight"] == "dense:fp16"
    assert f.tensor("0.weight").dtype == torch.float32
    assert torch.equal(f.tensor("0.weight"), net[0].weight.detach().half().float())
    assert f.nbytes("0.weight") == 2 * net[0].weight.numel()
    assert torch.equal(f.tensor("3.weight"), net[3].weight.detach())


def test_other_dtypes_round_trip_raw(tmp_path) -> None:
    m = nn.Module()
    m.register_buffer("b16", torch.randn(5).to(torch.bfloat16))
    m.register_buffer("f64", torch.randn(3, 2, dtype=torch.float64))
    m.register_buffer("flag", torch.tensor([True, False, True]))
    m.register_buffer("i8", torch.tensor([-3, 0, 9], dtype=torch.int8))
    m.register_buffer("scalar", torch.tensor(2.5))
    m.register_buffer("empty", torch.zeros(0, 3))
    save(m, tmp_path / "r.tsk")
    assert_same_state(effective_state_dict(m), read_tsk(tmp_path / "r.tsk").state_dict())


def test_pruned_lenet_loads_to_the_same_outputs_and_is_ten_times_smaller(tmp_path, pruned_lenet) -> None:
    info = save(pruned_lenet, tmp_path / "lenet.tsk")
    loaded = load(tmp_path / "lenet.tsk", dense=True)
    assert isinstance(loaded, ts.models.LeNet300100) and not loaded.training
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(pruned_lenet.eval()(x), loaded(x))
    assert_same_state(effective_state_dict(pruned_lenet), loaded.state_dict())
    # Measured: 102,763 bytes vs 1,066,896 (10.4x) at 92 % sparsity with zero biases.
    assert state_dict_bytes(pruned_lenet) / info.file_bytes > 8.0
    assert "huffman" in info.codecs["fc1.weight"]


def test_forced_codecs_are_respected(tmp_path, pruned_lenet) -> None:
    info = save(pruned_lenet, tmp_path / "f.tsk", codecs={"fc1.weight": "dense", "fc2.*": "fp16"}, huffman=False)
    assert info.codecs["fc1.weight"] == "dense"
    assert info.codecs["fc2.weight"] == info.codecs["fc2.bias"] == "dense:fp16"
    assert info.codecs["fc3.weight"].startswith("sparse(") and "huffman" not in info.codecs["fc3.weight"]
    assert read_tsk(tmp_path / "f.tsk").codec("fc1.weight") == "dense"
    assert info.tensor_bytes["fc1.weight"] == 4 * 300 * 784


def test_inspect_rows(tmp_path, pruned_lenet) -> None:
    info = save(pruned_lenet, tmp_path / "i.tsk")
    rows = {r["name"]: r for r in inspect_rows(tmp_path / "i.tsk")}
    fc1 = rows["fc1.weight"]
    assert fc1["shape"] == [300, 784] and fc1["numel"] == 235200
    assert fc1["nonzeros"] == round(0.08 * 235200)
    assert fc1["bytes"] == info.tensor_bytes["fc1.weight"]
    assert fc1["bits_per_weight"] == pytest.approx(8 * fc1["bytes"] / 235200)
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1 - info.header_bytes / info.file_bytes)


def test_file_is_a_plain_safetensors_container(tmp_path, pruned_lenet) -> None:
    from safetensors import safe_open

    save(pruned_lenet, tmp_path / "c.tsk")
    with safe_open(str(tmp_path / "c.tsk"), framework="numpy") as f:
        assert set(f.keys()) == {"data", "doc"}
        assert f.metadata() == {"torchshrink": "tsk/1"}


# --- packed forms --------------------------------------------------------------------------


def shared_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    attach(net[0], FakeShared(net[0].weight.detach()))
    return net


@pytest.mark.parametrize(
    ("codecs", "huffman", "expect"),
    [
        (None, None, "shared("),
        ({"0.weight": "bitpack"}, False, "shared(4b)"),
        ({"0.weight": "bitpack"}, True, "shared(4b)+huffman"),
        ({"0.weight": "sparse"}, False, "shared(4b)/sparse("),
        ({"0.weight": "sparse"}, True, "+huffman(gaps,codes)"),
        ({"0.weight": "dense"}, None, "dense"),
    ],
)
def test_shared_form_round_trips(tmp_path, codecs, huffman, expect) -> None:
    net = shared_net()
    info = save(net, tmp_path / "s.tsk", codecs=codecs, huffman=huffman)
    assert expect in info.codecs["0.weight"]
    f = read_tsk(tmp_path / "s.tsk")
    assert_same_state(effective_state_dict(net), f.state_dict())
    if expect != "dense":
        packed = f.packed("0.weight")
        assert np.array_equal(packed["indices"], net[0].parametrizations.weight[0].indices.numpy())


def test_auto_picks_the_smallest_shared_layout(tmp_path) -> None:
    net = shared_net()
    sizes = {}
    for codec in ("bitpack", "sparse", "dense"):
        for huffman in (False, True):
            sizes[codec, huffman] = save(net, tmp_path / "x.tsk", codecs={"0.weight": codec},
                                         huffman=huffman).tensor_bytes["0.weight"]
    auto = save(net, tmp_path / "a.tsk").tensor_bytes["0.weight"]
    assert auto <= min(sizes.values())


@pytest.mark.parametrize(("shape", "d", "ks"), [((6, 10), 4, [16]), ((4, 3, 3, 3), 4, [8, 4, 16])])
def test_pq_and_rq_forms_round_trip(tmp_path, shape, d, ks) -> None:
    layer = nn.Linear(10, 6) if len(shape) == 2 else nn.Conv2d(3, 4, 3)
    attach(layer, FakeQuantized(shape, d, ks))
    info = save(layer, tmp_path / "q.tsk", codecs={"weight": "bitpack"})
    assert info.codecs["weight"].startswith("pq(" if len(ks) == 1 else "rq(")
    f = read_tsk(tmp_path / "q.tsk")
    assert torch.equal(f.tensor("weight"), layer.weight.detach())
    assert f.packed("weight")["form"] == ("pq" if len(ks) == 1 else "rq")


def test_unpack_matches_a_reference_loop() -> None:
    rng = np.random.default_rng(0)
    out, n_in, d, ks = 3, 7, 3, [4, 5]
    stages = [{"codebooks": rng.standard_normal((3, k, d), dtype=np.float32),
               "codes": rng.integers(0, k, (out, 3)).astype(np.uint8)} for k in ks]
    got = unpack({"form": "rq", "shape": [out, n_in], "subvector": d, "pad": 2, "stages": stages})
    ref = np.zeros((out, 9), np.float32)
    for o in range(out):
        for s in range(3):
            ref[o, s * d:(s + 1) * d] = stages[0]["codebooks"][s, stages[0]["codes"][o, s]]
            ref[o, s * d:(s + 1) * d] += stages[1]["codebooks"][s, stages[1]["codes"][o, s]]
    np.testing.assert_array_equal(got, ref[:, :n_in])
    shared = unpack({"form": "shared", "shape": [2, 2], "codebook": np.array([0, 1.5], np.float32),
                     "indices": np.array([[0, 1], [1, 1]], np.uint8)})
    np.testing.assert_array_equal(shared, [[0, 1.5], [1.5, 1.5]])


def test_pack_that_disagrees_with_forward_is_refused(tmp_path) -> None:
    net = shared_net()
    net[0].parametrizations.weight[0].codebook[3] += 1.0  # forward changes, pack still reads it
    t = net[0].parametrizations.weight[0]
    t.pack = lambda latent: {"form": "shared", "shape": [30, 40], "codebook": np.zeros(16, np.float32),
                             "indices": t.indices.numpy()}
    with pytest.raises(TskFormatError, match="does not reproduce"):
        save(net, tmp_path / "bad.tsk")


def test_unpack_rejects_out_of_range_codes() -> None:
    with pytest.raises(TskFormatError, match="must lie in"):
        unpack({"form": "shared", "shape": [2], "codebook": np.zeros(2, np.float32), "indices": np.array([0, 2])})


# --- architecture ------------------------------------------------------------------------


def test_user_model_needs_a_model_to_load_into(tmp_path) -> None:
    net = small_net()
    save(net, tmp_path / "u.tsk")
    with pytest.raises(TskFormatError, match="records no architecture"):
        load(tmp_path / "u.tsk")


def test_shape_mismatch_with_the_given_model(tmp_path) -> None:
    save(small_net(), tmp_path / "u.tsk")
    other = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 11))
    with pytest.raises(TskFormatError, match=r"Shape mismatch.*3.weight"):
        load(tmp_path / "u.tsk", model=other)


def test_missing_keys_in_the_given_model(tmp_path) -> None:
    save(small_net(), tmp_path / "u.tsk")
    with pytest.raises(TskFormatError, match="does not fit the model"):
        load(tmp_path / "u.tsk", model=nn.Linear(64, 10))


def test_surgery_plan_is_stored_and_a_bad_one_in_a_file_is_refused(tmp_path, pruned_lenet) -> None:
    model = ts.factorize.low_rank(pruned_lenet, {"fc1": 8})
    save(model, tmp_path / "s.tsk")
    assert read_tsk(tmp_path / "s.tsk").surgery == [{"op": "low_rank", "layer": "fc1", "rank": 8}]
    resign(tmp_path / "s.tsk", lambda doc, blobs: doc["architecture"].update(surgery=[{"op": "svd", "layer": "fc1"}]))
    with pytest.raises(TskFormatError, match="bad architecture metadata: surgery step 0 has the unknown op 'svd'"):
        load(tmp_path / "s.tsk")


def test_surgery_plan_shapes_are_checked_before_building(tmp_path, pruned_lenet) -> None:
    save(ts.factorize.low_rank(pruned_lenet, {"fc1": 8}), tmp_path / "s.tsk")

    def edit(doc, blobs):
        doc["architecture"]["zoo_spec"]["kwargs"]["hidden"] = [1 << 14, 1 << 14]  # ~1 GB if built for real

    resign(tmp_path / "s.tsk", edit)
    with pytest.raises(TskFormatError, match="Shape mismatch"):
        load(tmp_path / "s.tsk")


def test_default_load_of_pruned_only_layers_runs_the_fp32_sparse_kernel_or_dense(tmp_path, pruned_lenet) -> None:
    from torchshrink.runtime.dispatch import force, unwrap_runtime
    from torchshrink.runtime.modules import CompressedLinear
    from torchshrink.runtime.sparse import SparseKernel

    save(pruned_lenet, tmp_path / "l.tsk")
    fast, plain = load(tmp_path / "l.tsk", batches=()), load(tmp_path / "l.tsk", dense=True)
    # pruned-only weights (plain 'sparse' form): a CSR kernel where the measured dispatch keeps it
    sparse = [m for m in unwrap_runtime(fast).modules() if isinstance(m, CompressedLinear)]
    assert sparse and all(isinstance(m.weight_, SparseKernel) for m in sparse)
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(force(fast, "kernel")(x), plain(x), rtol=1e-5, atol=1e-5)


# --- bad arguments -------------------------------------------------------------------------


def test_bad_save_arguments(tmp_path) -> None:
    net = small_net()
    with pytest.raises(TskFormatError, match="must be one of"):
        save(net, tmp_path / "x.tsk", codecs={"*": "zstd"})
    with pytest.raises(TskFormatError, match="matches no tensor"):
        save(net, tmp_path / "x.tsk", codecs={"fc9.*": "dense"})
    with pytest.raises(TskFormatError, match="no packed form"):
        save(net, tmp_path / "x.tsk", codecs={"3.weight": "bitpack"})
    with pytest.raises(TskFormatError, match="index_bits"):
        save(net, tmp_path / "x.tsk", index_bits=17)


# --- bad files -----------------------------------------------------------------------------


@pytest.fixture
def lenet_file(tmp_path, pruned_lenet):
    path = tmp_path / "lenet.tsk"
    save(pruned_lenet, path)
    return path


def test_missing_file(tmp_path) -> None:
    with pytest.raises(TskFormatError, match="does not exist"):
        read_tsk(tmp_path / "nope.tsk")


def test_truncated_file(lenet_file) -> None:
    raw = lenet_file.read_bytes()
    lenet_file.write_bytes(raw[:-100])
    with pytest.raises(TskFormatError, match="truncated"):
        read_tsk(lenet_file)


def test_file_shorter_than_the_length_field(lenet_file) -> None:
    lenet_file.write_bytes(b"\x01\x02")
    with pytest.raises(TskFormatError, match="too short"):
        read_tsk(lenet_file)


def test_oversized_header_length(lenet_file) -> None:
    raw = lenet_file.read_bytes()
    lenet_file.write_bytes(struct.pack("<Q", 1 << 60) + raw[8:])
    with pytest.raises(TskFormatError, match="declares a header"):
        read_tsk(lenet_file)


def test_header_not_json(lenet_file) -> None:
    raw = bytearray(lenet_file.read_bytes())
    raw[8] = ord("X")
    lenet_file.write_bytes(bytes(raw))
    with pytest.raises(TskFormatError, match="not valid JSON"):
        read_tsk(lenet_file)


def test_plain_safetensors_file_is_not_a_tsk(tmp_path, pruned_lenet) -> None:
    ts.weights.save_weights(pruned_lenet, tmp_path / "w.safetensors")
    with pytest.raises(TskFormatError, match="no torchshrink metadata"):
        read_tsk(tmp_path / "w.safetensors")


def test_bit_flip_in_a_blob_names_the_tensor(lenet_file) -> None:
    f = read_tsk(lenet_file)
    raw = bytearray(lenet_file.read_bytes())
    raw[f.header_bytes + 10] ^= 0x10  # inside the first blob
    lenet_file.write_bytes(bytes(raw))
    with pytest.raises(TskFormatError, match=r"Checksum mismatch in tensor 'fc"):
        read_tsk(lenet_file).state_dict()


def test_edited_metadata_fails_the_header_checksum(lenet_file) -> None:
    import zlib

    from safetensors.numpy import load_file, save_file

    arrays = load_file(str(lenet_file))
    text = zlib.decompress(arrays["doc"].tobytes())
    edited = text.replace(b'"dtype":"float32"', b'"dtype":"float16"', 1)
    assert edited != text
    arrays["doc"] = np.frombuffer(zlib.compress(edited), dtype=np.uint8)
    save_file(arrays, str(lenet_file), metadata={"torchshrink": "tsk/1"})
    with pytest.raises(TskFormatError, match="Header checksum mismatch"):
        read_tsk(lenet_file)


def test_wrong_version(lenet_file) -> None:
    resign(lenet_file, lambda doc, blobs: doc.update(format="tsk/2"))
    with pytest.raises(TskFormatError, match="Unsupported .tsk format version 'tsk/2'"):
        read_tsk(lenet_file)


def test_unknown_codec(lenet_file) -> None:
    def edit(doc, blobs):
        record(doc, "fc1.weight")["streams"]["gaps"]["meta"]["codec"] = "zstd"

    resign(lenet_file, edit)
    with pytest.raises(TskFormatError, match="unknown codec 'zstd'"):
        read_tsk(lenet_file)


def test_unknown_form(lenet_file) -> None:
    resign(lenet_file, lambda doc, blobs: record(doc, "fc1.weight").update(form="no_such_form"))
    with pytest.raises(TskFormatError, match="unknown form 'no_such_form'"):
        read_tsk(lenet_file)


def test_missing_blob(lenet_file) -> None:
    resign(lenet_file, lambda doc, blobs: blobs.pop("fc1.weight:values"))
    with pytest.raises(TskFormatError, match="missing blob 'fc1.weight:values'"):
        read_tsk(lenet_file)


def test_stream_shape_mismatch(lenet_file) -> None:
    def edit(doc, blobs):
        record(doc, "fc2.weight")["shape"] = [300, 100]

    resign(lenet_file, edit)
    with pytest.raises(TskFormatError, match="Shape mismatch"):
        load(lenet_file)


def test_claimed_size_is_checked_before_allocating(lenet_file) -> None:
    def edit(doc, blobs):
        record(doc, "fc3.bias")["shape"] = [1 << 30]  # the all-zero bias has an empty gap stream

    resign(lenet_file, edit)
    with pytest.raises(TskFormatError, match=r"declares 4,296,033,696 bytes of tensors, more than the 4,294,967,296"):
        read_tsk(lenet_file)  # the default cap refuses before anything is decoded
    with pytest.raises(TskFormatError, match=r"from 99,630 bytes of file, more than 256× expansion allows .*'fc3.bias'"):
        read_tsk(lenet_file, max_bytes=1 << 33)  # so does the file's own size
    with pytest.raises(TskFormatError, match="cannot cover"):  # and the stream is checked before allocating
        read_tsk(lenet_file, max_bytes=1 << 33, max_expansion=1e6).tensor("fc3.bias")


def test_huge_declared_tensor(lenet_file) -> None:
    resign(lenet_file, lambda doc, blobs: record(doc, "fc3.bias").update(shape=[1 << 20, 1 << 20]))
    with pytest.raises(TskFormatError, match="declares"):
        read_tsk(lenet_file)


def test_hostile_architecture_is_checked_without_allocating(lenet_file) -> None:
    def edit(doc, blobs):
        doc["architecture"]["zoo_spec"]["num_classes"] = 10**12  # would need 4 TB if built for real

    resign(lenet_file, edit)
    with pytest.raises(TskFormatError, match="Shape mismatch"):
        load(lenet_file)


# --- invariants both load paths share ------------------------------------------------------


def test_shared_codebook_must_start_with_zero_on_both_paths(tmp_path) -> None:
    path = tmp_path / "s.tsk"
    save(shared_net(), path, codecs={"0.weight": "bitpack"})

    def edit(doc, blobs):
        rec = record(doc, "0.weight")
        blob = rec["streams"]["codebook"]["blob"]
        cb = np.frombuffer(blobs[blob], "<f4").copy()
        cb[0] = 0.5
        blobs[blob] = cb.tobytes()
        rec["streams"]["codebook"]["crc32"] = f"{__import__('zlib').crc32(blobs[blob]) & 0xFFFFFFFF:08x}"

    resign(path, edit)
    for dense in (False, True):
        with pytest.raises(TskFormatError, match=r"Tensor '0.weight'.*codebook must start with 0.0"):
            load(path, model=shared_net_plain(), dense=dense)


def shared_net_plain() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))


def test_record_dtype_must_fit_its_stream(tmp_path) -> None:
    path = tmp_path / "u.tsk"
    save(small_net(), path, codecs={"3.bias": "dense"})
    resign(path, lambda doc, blobs: record(doc, "3.bias").update(dtype="bool"))
    with pytest.raises(TskFormatError, match=r"Tensor '3.bias'.*'bool' tensor cannot be stored as dense floats"):
        read_tsk(path).tensor("3.bias")


def test_nan_in_a_stored_tensor_is_refused(tmp_path) -> None:
    net = small_net()
    with torch.no_grad():
        net[3].bias[2] = float("nan")
    save(net, tmp_path / "n.tsk")
    with pytest.raises(TskFormatError, match=r"Tensor '3.bias'.*NaN or infinite"):
        load(tmp_path / "n.tsk", model=small_net())


def test_unreadable_file_is_a_format_error(tmp_path, monkeypatch) -> None:
    path = tmp_path / "u.tsk"
    save(small_net(), path)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "open", denied)
    with pytest.raises(TskFormatError, match="Cannot read the .tsk file .*Permission denied"):
        read_tsk(path)


def test_caller_sets_the_decoded_size_cap(tmp_path) -> None:
    save(small_net(), tmp_path / "u.tsk")
    declared = read_tsk(tmp_path / "u.tsk").decoded_bytes()
    assert declared == sum(t.numel() * t.element_size() for t in effective_state_dict(small_net()).values())
    with pytest.raises(TskFormatError, match=f"declares {declared:,} bytes of tensors, more than the {declared - 1:,}"):
        load(tmp_path / "u.tsk", model=small_net(), max_bytes=declared - 1)
    load(tmp_path / "u.tsk", model=small_net(), max_bytes=declared)


def test_a_padded_file_is_mapped_not_read(tmp_path) -> None:
    import resource

    path = tmp_path / "big.tsk"
    save(small_net(), path)
    with path.open("ab") as fh:
        fh.truncate(path.stat().st_size + (1 << 30))  # 1 GiB of trailing zeros (sparse on disk)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(TskFormatError, match="truncated or has extra bytes"):
        read_tsk(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 64
