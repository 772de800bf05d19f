"""Fuzzing the .tsk reader: any corruption either loads the original tensors or raises
TskFormatError -- never another exception, never a hang -- and the loader's contract case by
case: every rejection is a TskFormatError naming the tensor (shape mismatches on every path,
codebook invariants, record dtypes a stream cannot hold), decoded-size bombs are refused
before they cost memory (checked in a worker process under an address-space cap, so a
loader that does decode them cannot take the CI machine down), and load() and
load(dense=True) agree on every file. ``benchmarks/fuzz_tsk.py`` is the long-running
version of the same mutations."""

from __future__ import annotations

import json
import math
import os
import re
import select
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import torchshrink as ts
from torchshrink.core.transform import WeightTransform, attach, effective_state_dict
from torchshrink.errors import TskFormatError
from torchshrink.format import inspect_rows, load, read_tsk, save
from torchshrink.format.container import read_container


class _Shared(WeightTransform):
    """A tiny weight-sharing transform with a packed form (4-entry codebook)."""

    def __init__(self, indices: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("codebook", torch.tensor([0.0, -0.5, 0.25, 1.0]))
        self.register_buffer("indices", indices.to(torch.uint8))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.codebook[self.indices.long()]

    def pack(self, latent: torch.Tensor) -> dict:
        return {"form": "shared", "shape": list(self.indices.shape), "codebook": self.codebook.numpy(),
                "indices": self.indices.numpy()}


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 6), nn.Linear(6, 3))
    with torch.no_grad():
        net[2].weight[net[2].weight.abs() < 0.3] = 0.0
    idx = torch.randint(0, 4, (3, 6), generator=torch.Generator().manual_seed(1))
    idx[idx == 3] = 0
    attach(net[3], _Shared(idx))
    return net


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "orig.tsk"
    model = _model()
    info = save(model, path, codecs={"0.weight": "dense", "2.weight": "sparse"}, huffman=True)
    assert "huffman" in info.codecs["2.weight"] and info.codecs["3.weight"].startswith("shared(")
    return path.read_bytes(), effective_state_dict(model), path.parent


def _mutate(raw: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(raw)
    (header_len,) = struct.unpack("<Q", raw[:8])
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "header_byte", "header_digit", "length"]))
    if kind == "flip":
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        del buf[data.draw(st.integers(0, len(buf) - 1)):]
    elif kind == "insert":
        pos = data.draw(st.integers(0, len(buf)))
        buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    elif kind == "header_byte":
        buf[data.draw(st.integers(8, 8 + header_len - 1))] = data.draw(st.integers(0, 255))
    elif kind == "header_digit":
        digits = [m.start() for m in re.finditer(rb"[0-9]", raw[8 : 8 + header_len])]
        buf[8 + data.draw(st.sampled_from(digits))] = ord(str(data.draw(st.integers(0, 9))))
    else:
        new_len = data.draw(st.one_of(st.integers(0, len(buf)), st.integers(0, 2**64 - 1)))
        buf[:8] = struct.pack("<Q", new_len)
    return bytes(buf)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_corrupted_files_load_exactly_or_raise_tsk_format_error(original, data) -> None:
    raw, state, folder = original
    mutated = _mutate(raw, data)
    path = folder / "mutated.tsk"
    path.write_bytes(mutated)
    try:
        loaded = read_tsk(path).state_dict()
    except TskFormatError:
        return
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
        if v.is_floating_point():  # the sign of zero too: a flip must not pass unnoticed
            assert np.array_equal(torch.signbit(loaded[k]).numpy(), torch.signbit(v).numpy()) or k == "2.weight"
    _check_load_agrees(path)


# =============================================================================================
# The loader's contract, case by case: every rejection is a TskFormatError naming the tensor,
# decoded-size bombs are refused before they cost memory, and load() and load(dense=True)
# agree on every file (both refuse it, or both load it and give the same outputs).
# =============================================================================================

def _plain() -> nn.Module:
    """The layers of :func:`_model` without the transform, for ``load(model=...)``."""
    return nn.Sequential(nn.Linear(12, 8), nn.BatchNorm1d(8), nn.Linear(8, 6), nn.Linear(6, 3))


def _check_load_agrees(path) -> None:
    """load(model=...) and load(model=..., dense=True) both refuse ``path`` or both give the same outputs."""
    outcomes = []
    x = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    for dense in (False, True):
        try:
            model = load(path, model=_plain(), dense=dense)
        except TskFormatError:
            outcomes.append(None)
            continue
        with torch.no_grad():
            outcomes.append(model(x))
    assert (outcomes[0] is None) == (outcomes[1] is None), "only one of load() / load(dense=True) refused the file"
    if outcomes[0] is not None:
        torch.testing.assert_close(outcomes[0], outcomes[1], rtol=1e-4, atol=1e-5)


# --- a self-contained container writer (any field can be made wrong, and nothing is fsynced) ---


def _canonical(doc) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _crc(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _write(path, doc: dict, blobs: dict[str, bytes]) -> None:
    """A .tsk file of ``doc`` and ``blobs`` with a valid header checksum (as save() writes it)."""
    spans, pos = {}, 0
    for name, b in blobs.items():
        spans[name] = [pos, pos + len(b)]
        pos += len(b)
    full = {**{k: v for k, v in doc.items() if k not in ("blobs", "header_crc32")}, "blobs": spans}
    full["header_crc32"] = _crc(_canonical(full).encode())
    _write_doc_text(path, b"".join(blobs.values()), _canonical(full).encode())


def _edited(src, dst, edit):
    """Copy the .tsk file ``src`` to ``dst`` after ``edit(doc, blobs)``, re-signed; return ``dst``."""
    doc, blobs, _, _ = read_container(src)
    doc = json.loads(json.dumps(doc))
    blobs = {k: bytes(v) for k, v in blobs.items()}
    edit(doc, blobs)
    _write(dst, doc, blobs)
    return dst


def _rec(doc: dict, name: str) -> dict:
    return next(r for r in doc["tensors"] if r["name"] == name)


def _set_stream(doc, blobs, name: str, role: str, data: bytes, meta: dict) -> None:
    s = _rec(doc, name)["streams"][role]
    blobs[s["blob"]] = data
    s.update(meta=meta, nbytes=len(data), crc32=_crc(data))


def _stream(path, name: str, role: str) -> np.ndarray:
    from torchshrink.format import decode

    doc, blobs, _, _ = read_container(path)
    s = _rec(doc, name)["streams"][role]
    return decode(blobs[s["blob"]], s["meta"])


def _pack5(values) -> bytes:
    acc = 0
    for i, v in enumerate(values):
        acc |= int(v) << (5 * i)
    return acc.to_bytes((5 * len(values) + 7) // 8, "little")


def _huffman_const(shape: list[int], symbol: int, dtype: str) -> tuple[bytes, dict]:
    """A valid Huffman stream of ``prod(shape)`` copies of ``symbol``: one bit each."""
    n = math.prod(shape)
    if n == 0:
        return b"", {"codec": "huffman", "shape": list(shape), "dtype": dtype, "alphabet": 0, "stream_bits": 0}
    lengths = [0] * symbol + [1]
    return _pack5(lengths) + bytes((n + 7) // 8), {"codec": "huffman", "shape": list(shape), "dtype": dtype,
                                                    "alphabet": symbol + 1, "stream_bits": n}


def _dense(values, shape: list[int]) -> tuple[bytes, dict]:
    return np.asarray(values, "<f4").reshape(shape).tobytes(), {"codec": "dense", "dtype": "float32",
                                                                "shape": list(shape)}


def _put(doc, blobs, name: str, shape: list[int], form: str, params: dict, streams: dict) -> None:
    """Replace tensor ``name``'s record by ``form`` with ``streams`` ({role: (bytes, meta)})."""
    rec = _rec(doc, name)
    for s in rec["streams"].values():
        blobs.pop(s["blob"])
    rec.update(shape=list(shape), dtype="float32", form=form, params=params, streams={})
    for role, (data, meta) in streams.items():
        blobs[f"{name}:{role}"] = data
        rec["streams"][role] = {"blob": f"{name}:{role}", "meta": meta, "nbytes": len(data), "crc32": _crc(data)}


def _sparse_bomb(shape: list[int], b: int = 16, shared: bool = False) -> tuple[str, dict, dict]:
    """Relative-index streams of all-padding entries (gap 2**b - 1, one Huffman bit each) covering ``shape``."""
    count = math.prod(shape) >> b
    gaps = _huffman_const([count], (1 << b) - 1, "uint16")
    if shared:
        return "shared_sparse", {"bits": 1, "index_bits": b}, {
            "codebook": _dense([0.0, 0.5], [2]), "gaps": gaps, "codes": _huffman_const([count], 0, "uint8")}
    return "sparse", {"index_bits": b}, {"gaps": gaps, "values": _dense(np.zeros(count), [count])}


def _pq_bomb(out: int, d: int, stages: int = 1) -> tuple[str, dict, dict]:
    """pq (or rq) codes of one sub-vector per row and one codeword: one Huffman bit per row."""
    part = {"codebooks": _dense(np.full(d, 0.25), [1, 1, d]), "codes": _huffman_const([out, 1], 0, "uint8")}
    if stages == 1:
        return "pq", {"subvector": d, "pad": 0}, part
    return "rq", {"subvector": d, "pad": 0, "stages": stages}, {
        f"stages.{t}.{k}": v for t in range(stages) for k, v in part.items()}


# --- seeds: files as the shipped recipes make them (random init, no training) -------------


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")

    def net(name: str, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        m = ts.models.build_model(name, (1, 8, 8), 10)
        with torch.no_grad():  # nonzero biases: stored dense
            for mod in m.modules():
                if getattr(mod, "bias", None) is not None:
                    mod.bias.normal_(0, 0.1)
        return m

    out = {}
    m = net("lenet300", 0)
    ts.prune.magnitude(m, sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.8})
    save(m, folder / "sparse.tsk")
    out["sparse"] = folder / "sparse.tsk"
    ts.quantize.kmeans(m, bits=4)
    save(m, folder / "shared_sparse.tsk", huffman=True)
    save(m, folder / "shared.tsk", huffman=False, codecs={"*.weight": "bitpack"})
    out["shared_sparse"], out["shared"] = folder / "shared_sparse.tsk", folder / "shared.tsk"
    m = net("lenet5", 1)
    ts.quantize.product_quantize(m, subvector=4, codewords=16, layers=["fc1"])
    save(m, folder / "pq.tsk")
    out["pq"] = folder / "pq.tsk"
    m = ts.factorize.low_rank(net("lenet300", 2), {"fc1": 8})
    ts.prune.magnitude(m, sparsity=0.5)
    save(m, folder / "surgery.tsk")
    out["surgery"] = folder / "surgery.tsk"
    f = {k: read_tsk(p) for k, p in out.items()}
    assert f["sparse"].codec("fc1.bias") == "dense" and f["sparse"].codec("fc1.weight").startswith("sparse(")
    assert f["shared_sparse"].form("fc1.weight").name == "shared_sparse"
    assert f["shared"].form("fc1.weight").name == "shared"
    assert f["pq"].form("fc1.weight").name == "pq" and f["surgery"].surgery
    return out


def _x(path) -> torch.Tensor:
    shape = read_tsk(path).zoo_spec["input_shape"]
    return torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))


def _paths(path, name: str) -> dict:
    """Every way to read tensor ``name`` of ``path``: outcome of each (the error, or a value)."""
    ways = {
        "read_tsk().tensor": lambda: read_tsk(path).tensor(name),
        "read_tsk().state_dict": lambda: read_tsk(path).state_dict(),
        "inspect_rows": lambda: inspect_rows(path),
        "load": lambda: load(path),
        "load(dense=True)": lambda: load(path, dense=True),
    }
    out = {}
    for way, fn in ways.items():
        try:
            out[way] = fn()
        except TskFormatError as exc:
            out[way] = exc
    return out


def _assert_refused_everywhere(path, name: str, ways=None) -> None:
    got = _paths(path, name)
    for way, value in got.items():
        if ways is not None and way not in ways:
            continue
        assert isinstance(value, TskFormatError), f"{way} accepted the file (edit of {name!r})"
        assert name in str(value), f"{way}: the error does not name {name!r}: {value}"


def _assert_load_agrees(path) -> None:
    """load() and load(dense=True): both refuse, or both load and give the same outputs."""
    got = []
    for dense in (False, True):
        try:
            got.append(load(path, dense=dense))
        except TskFormatError as exc:
            got.append(exc)
    kinds = [isinstance(g, TskFormatError) for g in got]
    assert kinds[0] == kinds[1], f"load() -> {got[0]!r:.200}, load(dense=True) -> {got[1]!r:.200}"
    if not kinds[0]:
        x = _x(path)
        with torch.no_grad():
            torch.testing.assert_close(got[0](x), got[1](x), rtol=1e-4, atol=1e-5)


# --- shape mismatches, on every path ------------------------------------------------------

_SHAPE_CASES = [("sparse", "fc1.weight"), ("sparse", "fc2.bias"), ("shared_sparse", "fc1.weight"),
                ("shared", "fc2.weight"), ("pq", "fc1.weight"), ("pq", "conv1.weight"),
                ("surgery", "fc1.first.weight"), ("surgery", "fc1.second.bias")]


_RELATIVE_INDEX = ("sparse", "shared_sparse")


@pytest.mark.parametrize("where", ["record", "stream", "record+streams"])
@pytest.mark.parametrize(("seed", "name"), _SHAPE_CASES)
def test_shape_mismatch_is_refused_on_every_path(seeds, tmp_path, seed, name, where) -> None:
    """One more row in the record, in one stream's meta, or in both (where a stream is tied to the
    record's shape). A relative-index record gets twice the rows: its streams cannot cover them."""
    def edit(doc, blobs):
        rec = _rec(doc, name)
        old = list(rec["shape"])
        if where != "stream":
            rec["shape"][0] = 2 * old[0] if rec["form"] in _RELATIVE_INDEX else old[0] + 1
        for s in rec["streams"].values():
            if where == "stream" or (where == "record+streams" and s["meta"].get("shape", [None])[0] == old[0]):
                s["meta"]["shape"][0] += 1
                if where == "stream":
                    break

    path = _edited(seeds[seed], tmp_path / "m.tsk", edit)
    _assert_refused_everywhere(path, name)


@pytest.mark.parametrize("seed", _RELATIVE_INDEX)
def test_a_relative_index_record_one_row_taller_loads_nowhere_as_a_model(seeds, tmp_path, seed) -> None:
    """fc1.weight one row taller: the streams may still cover it (the extra row sits in the last gap,
    all zeros), so read_tsk() may return it padded with zeros -- but no load builds a model from it."""
    path = _edited(seeds[seed], tmp_path / "m.tsk", lambda doc, blobs: _rec(doc, "fc1.weight")["shape"]
                   .__setitem__(0, 301))
    _assert_refused_everywhere(path, "fc1.weight", ways=("load", "load(dense=True)"))
    try:
        t = read_tsk(path).tensor("fc1.weight")
    except TskFormatError as exc:
        assert "fc1.weight" in str(exc)
    else:
        assert t.shape == (301, 64) and not t[300].any()
        assert torch.equal(t[:300], read_tsk(seeds[seed]).tensor("fc1.weight"))


@pytest.mark.parametrize("step", [{"rank": 9}, {"rank": 7}, {"layer": "fc2"}])
def test_a_surgery_plan_that_does_not_fit_the_records_is_refused_by_both_loads(seeds, tmp_path, step) -> None:
    path = _edited(seeds["surgery"], tmp_path / "s.tsk", lambda doc, blobs: doc["architecture"]["surgery"][0]
                   .update(step))
    for dense in (False, True):
        with pytest.raises(TskFormatError, match=r"fc\d\.(first|second)\.weight"):
            load(path, dense=dense)


def test_hidden_sizes_that_do_not_fit_the_records_are_refused_by_both_loads(seeds, tmp_path) -> None:
    path = _edited(seeds["surgery"], tmp_path / "s.tsk",
                   lambda doc, blobs: doc["architecture"]["zoo_spec"]["kwargs"].update(hidden=[300, 101]))
    for dense in (False, True):
        with pytest.raises(TskFormatError, match=r"fc2\.weight"):
            load(path, dense=dense)


# --- codebook invariants -------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["shared_sparse", "shared"])
@pytest.mark.parametrize("first", [0.125, -1e-30, 1.0])
def test_a_codebook_whose_first_level_is_not_zero_is_refused_by_every_path(seeds, tmp_path, seed, first) -> None:
    cb = _stream(seeds[seed], "fc1.weight", "codebook").copy()
    cb[0] = first
    path = _edited(seeds[seed], tmp_path / "c.tsk",
                   lambda doc, blobs: _set_stream(doc, blobs, "fc1.weight", "codebook", *_dense(cb, [cb.size])))
    _assert_refused_everywhere(path, "fc1.weight")


@pytest.mark.parametrize("seed", ["shared_sparse", "shared"])
def test_a_second_zero_level_loads_the_same_both_ways(seeds, tmp_path, seed) -> None:
    cb = _stream(seeds[seed], "fc1.weight", "codebook").copy()
    cb[3] = 0.0
    path = _edited(seeds[seed], tmp_path / "c.tsk",
                   lambda doc, blobs: _set_stream(doc, blobs, "fc1.weight", "codebook", *_dense(cb, [cb.size])))
    _assert_load_agrees(path)


# --- dtype checks ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int64", "bfloat16", "float16", "float64"])
@pytest.mark.parametrize("name", ["fc1.bias", "fc1.weight"])
def test_a_plain_record_whose_dtype_its_float32_streams_do_not_hold_is_refused(seeds, tmp_path, name, dtype) -> None:
    """fc1.bias is stored dense, fc1.weight sparse; both as float32 values (save() keeps a tensor's own
    float dtype in its streams, so any other record dtype means a corrupted record)."""
    path = _edited(seeds["sparse"], tmp_path / "d.tsk", lambda doc, blobs: _rec(doc, name).update(dtype=dtype))
    _assert_refused_everywhere(path, name)


@pytest.mark.parametrize("seed", ["shared", "shared_sparse", "pq"])
def test_a_packed_record_declared_float16_loads_the_same_both_ways(seeds, tmp_path, seed) -> None:
    """A packed weight's codebooks are float32 even for a float16 tensor; a record that says float16
    over codebook values float16 cannot hold must be refused, or at least load the same both ways."""
    path = _edited(seeds[seed], tmp_path / "h.tsk", lambda doc, blobs: _rec(doc, "fc1.weight").update(dtype="float16"))
    _assert_load_agrees(path)


@pytest.mark.parametrize("dtype", ["int32", "float16"])
def test_a_raw_stream_whose_dtype_differs_from_the_record_is_refused(seeds, tmp_path, dtype) -> None:
    def edit(doc, blobs):
        s = _rec(doc, "fc1.bias")["streams"]["data"]
        data = blobs[s["blob"]]
        if dtype == "float16":
            data = data[: len(data) // 2]
        _set_stream(doc, blobs, "fc1.bias", "data", data, {"codec": "raw", "dtype": dtype, "shape": [300]})

    _assert_refused_everywhere(_edited(seeds["sparse"], tmp_path / "r.tsk", edit), "fc1.bias")


# --- decoded-size bombs: refused before decoding, in a worker under an address-space cap ----

_CAP_MB = 512
_WORKER = r'''
import gc, json, re, resource, sys, traceback
import torch
from torchshrink.errors import TskFormatError
from torchshrink.format import inspect_rows, load, read_tsk

torch.set_num_threads(1)
def kb(field):
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{field}:\s+(\d+)", fh.read(), re.M).group(1))
def run(op, path, name):
    if op == "tensor":
        read_tsk(path).tensor(name)
    elif op == "inspect_rows":
        inspect_rows(path)
    else:
        load(path, dense=op == "load(dense=True)")
out, sys.stdout = sys.stdout, sys.stderr
for op in ("tensor", "inspect_rows", "load", "load(dense=True)"):  # compile the kernels outside the cap
    run(op, sys.argv[2], "fc1.weight")
gc.collect()
gc.freeze()
out.write("ready\n")
out.flush()
for line in sys.stdin:
    req = json.loads(line)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    rss0 = kb("VmRSS")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (kb("VmSize") * 1024 + int(sys.argv[1]) * 2**20, hard))
    res = {"status": "ok"}
    try:
        run(req["op"], req["path"], req["name"])
    except TskFormatError as exc:
        res = {"status": "TskFormatError", "msg": str(exc)}
    except BaseException as exc:
        res = {"status": type(exc).__name__, "msg": str(exc)[:300], "tb": traceback.format_exc()[-1500:]}
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    res["peak_mb"] = (kb("VmHWM") - rss0) / 1024
    out.write(json.dumps(res) + "\n")
    out.flush()
'''


class _CappedLoader:
    """A long-lived worker that runs one load at a time under RLIMIT_AS = its address space + cap,
    and reports the load's outcome and peak RSS (the kernel's high-water mark, reset per load)."""

    def __init__(self, warm) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(_CAP_MB), str(warm)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        assert self._line(300) == b"ready"

    def _line(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the capped loader hung for {timeout} s"
        line = self.proc.stdout.readline()
        assert line, f"the capped loader died (exit {self.proc.wait()})"
        return line.strip()

    def __call__(self, op: str, path, name: str) -> dict:
        self.proc.stdin.write((json.dumps({"op": op, "path": str(path), "name": name}) + "\n").encode())
        self.proc.stdin.flush()
        return json.loads(self._line(120))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def capped(seeds):
    loader = _CappedLoader(seeds["shared_sparse"])
    yield loader
    loader.close()


def _bomb_record(name: str, shape: list[int], kind: str):
    def edit(doc, blobs):
        if kind in ("sparse", "shared_sparse"):
            form, params, streams = _sparse_bomb(shape, shared=kind == "shared_sparse")
        else:
            form, params, streams = _pq_bomb(*shape, stages=1 if kind == "pq" else 8)
        _put(doc, blobs, name, shape, form, params, streams)
    return edit


def _bomb_with_spec(h1: int, h2: int):
    """hidden=[h1, h2] in the zoo_spec and every record it changes an all-padding sparse bomb of that shape,
    so that load() gets past its shape check against the architecture."""
    def edit(doc, blobs):
        doc["architecture"]["zoo_spec"]["kwargs"]["hidden"] = [h1, h2]
        for name, shape in {"fc1.weight": [h1, 64], "fc1.bias": [h1], "fc2.weight": [h2, h1], "fc2.bias": [h2],
                            "fc3.weight": [10, h2]}.items():
            _put(doc, blobs, name, shape, *_sparse_bomb(shape, b=16))
    return edit


# (edit, the tensor the error must name): each file is 50 KB to 1 MB and declares 0.7-18 GB.
_BOMBS = {
    # under the default max_bytes (4 GiB): 2**29 floats (2 GiB) from 32 KB of streams
    "sparse_16bit_gaps_2GiB": (_bomb_record("fc1.weight", [1 << 13, 1 << 16], "sparse"), "fc1.weight"),
    # past max_bytes: 2**32 floats (16 GiB) from 264 KB
    "sparse_16bit_gaps_16GiB": (_bomb_record("fc1.weight", [1 << 16, 1 << 16], "sparse"), "fc1.weight"),
    # shared_sparse: codebook, gaps and codes all tiny; 2**29 weights (2 GiB) from 2 KB
    "shared_sparse_1bit_2GiB": (_bomb_record("fc2.weight", [1 << 15, 1 << 14], "shared_sparse"), "fc2.weight"),
    # pq: one codeword, one 256-wide sub-vector, one Huffman bit per row: 1 GiB from 130 KB
    "pq_1bit_rows_1GiB": (_bomb_record("fc1.weight", [1 << 20, 256], "pq"), "fc1.weight"),
    # rq: 8 such stages
    "rq_8_stages_1GiB": (_bomb_record("fc1.weight", [1 << 20, 256], "rq"), "fc1.weight"),
    # the zoo_spec agrees with the records: load() decodes ~700 MB from ~15 KB, then builds the model
    "record_and_zoo_spec_700MB": (_bomb_with_spec(1 << 20, 100), "fc"),
    # ... or ~17 GB
    "record_and_zoo_spec_17GB": (_bomb_with_spec(1 << 22, 1 << 10), "fc"),
}


@pytest.mark.parametrize("bomb", list(_BOMBS))
def test_decoded_size_bombs_are_refused_before_they_cost_memory(seeds, capped, tmp_path, bomb) -> None:
    edit, name = _BOMBS[bomb]
    path = _edited(seeds["sparse"], tmp_path / f"{bomb}.tsk", edit)
    assert path.stat().st_size < 3 << 20
    failures = []
    for op in ("tensor", "inspect_rows", "load", "load(dense=True)"):
        res = capped(op, path, name if name != "fc" else "fc1.weight")
        if res["status"] != "TskFormatError" or name not in res["msg"]:
            failures.append(f"{op}: {res['status']} {res.get('msg', '')[:200]}")
        elif res["peak_mb"] > 64:
            failures.append(f"{op}: refused, but only after {res['peak_mb']:.0f} MB (RSS peak)")
    assert not failures, f"{bomb} ({path.stat().st_size} B):\n" + "\n".join(failures)


# --- signed edits: every outcome is a clean error or a consistent load --------------------

_VALUES = st.sampled_from([0, 1, 2, 3, 4, 5, 7, 8, 12, 15, 16, 17, -1, None, "4", 2.0, True, []])
_DTYPES = st.sampled_from(["float32", "float16", "float64", "bfloat16", "int8", "uint8", "int64", "bool", "x"])


def _edit_shape(data, shape):
    shape = list(shape) if isinstance(shape, list) else []
    kind = data.draw(st.sampled_from(["inc", "dec", "dbl", "add", "drop", "zero"]))
    if not shape or kind == "add":
        return shape + [1]
    i = data.draw(st.integers(0, len(shape) - 1))
    if kind == "drop":
        return shape[:i] + shape[i + 1:]
    shape[i] = {"inc": shape[i] + 1, "dec": shape[i] - 1, "dbl": shape[i] * 2, "zero": 0}[kind]
    return shape


@settings(max_examples=250, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_signed_edits_raise_tsk_format_error_or_load_the_same_both_ways(seeds, tmp_path_factory, data) -> None:
    seed = data.draw(st.sampled_from(sorted(seeds)))
    doc0, _, _, _ = read_container(seeds[seed])
    rec = data.draw(st.sampled_from([r["name"] for r in doc0["tensors"]]))
    what = data.draw(st.sampled_from(["shape", "dtype", "param", "meta", "meta_shape", "blob", "spec"]))

    def edit(doc, blobs):
        r = _rec(doc, rec)
        if what == "shape":
            r["shape"] = _edit_shape(data, r["shape"])
        elif what == "dtype":
            r["dtype"] = data.draw(_DTYPES)
        elif what == "param":
            key = data.draw(st.sampled_from(sorted({*r["params"], "index_bits", "bits", "subvector", "pad", "stages"})))
            r["params"][key] = data.draw(_VALUES)
        elif what in ("meta", "meta_shape"):
            s = r["streams"][data.draw(st.sampled_from(sorted(r["streams"])))]
            if what == "meta_shape":
                s["meta"]["shape"] = _edit_shape(data, s["meta"]["shape"])
            else:
                key = data.draw(st.sampled_from(sorted(set(s["meta"]) - {"shape"})))
                s["meta"][key] = data.draw(_DTYPES if key == "dtype" else _VALUES)
        elif what == "blob":
            role = data.draw(st.sampled_from(sorted(r["streams"])))
            raw = bytearray(blobs[r["streams"][role]["blob"]])
            if raw and data.draw(st.booleans()):
                raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
            else:
                raw += bytes(data.draw(st.integers(1, 3)))
            _set_stream(doc, blobs, rec, role, bytes(raw), r["streams"][role]["meta"])
        else:
            spec = doc["architecture"]["zoo_spec"]
            key = data.draw(st.sampled_from(["num_classes", "input_shape", "kwargs"]))
            if key == "num_classes":
                spec["num_classes"] = data.draw(st.sampled_from([9, 11, 1, 0]))
            elif key == "input_shape":
                spec["input_shape"] = data.draw(st.sampled_from([[1, 8, 9], [3, 8, 8], [1, 16, 16], [1, 8]]))
            elif "hidden" in spec["kwargs"]:
                spec["kwargs"]["hidden"] = data.draw(st.sampled_from([[300, 101], [299, 100], [300]]))
            else:
                spec["kwargs"]["padding"] = data.draw(st.sampled_from([0, 1, 3]))

    path = _edited(seeds[seed], tmp_path_factory.mktemp("edit") / "e.tsk", edit)
    try:
        read_tsk(path).state_dict()
        inspect_rows(path)
    except TskFormatError:
        pass
    _assert_load_agrees(path)


# --- findings of benchmarks/fuzz_tsk.py ------------------------------------------------------


@pytest.mark.parametrize("literal", [b"1e999", b"-1e999"])
def test_a_document_holding_a_non_finite_number_is_refused(seeds, tmp_path, literal) -> None:
    """json.loads reads 1e999 as inf (only the NaN / Infinity literals are refused by name);
    the document's checksum is computed over canonical JSON, which cannot hold inf."""
    doc, blobs, _, _ = read_container(seeds["sparse"])
    doc = json.loads(json.dumps(doc))
    path = tmp_path / "inf.tsk"
    _write(path, doc, {k: bytes(v) for k, v in blobs.items()})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    a, b = header["doc"]["data_offsets"]
    text = zlib.decompress(raw[8 + n + a : 8 + n + b]).replace(b'"num_classes":10', b'"num_classes":' + literal, 1)
    assert literal in text
    _write_doc_text(path, raw[8 + n : 8 + n + a], text)
    for fn in (read_tsk, inspect_rows, load, lambda p: load(p, dense=True)):
        with pytest.raises(TskFormatError):
            fn(path)


def _write_doc_text(path, data: bytes, text: bytes) -> None:
    """A container of ``data`` and the document ``text`` as given (no checks, so tests can forge one)."""
    z = zlib.compress(text)
    header = {"__metadata__": {"torchshrink": "tsk/1"},
              "data": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]},
              "doc": {"dtype": "U8", "shape": [len(z)], "data_offsets": [len(data), len(data) + len(z)]}}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + data + z)


@pytest.mark.parametrize("shape", [[300.0, 64], [300, "64"], [True, 64], [300, -64], [300, None]])
def test_a_malformed_record_shape_is_refused_naming_the_tensor(seeds, tmp_path, shape) -> None:
    path = _edited(seeds["sparse"], tmp_path / "s.tsk", lambda doc, blobs: _rec(doc, "fc1.weight").update(shape=shape))
    with pytest.raises(TskFormatError, match="fc1.weight"):
        read_tsk(path)
