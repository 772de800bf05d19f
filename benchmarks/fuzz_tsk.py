"""Fuzz the .tsk loader: mutate real files, load each in a memory-capped worker, count outcomes.

    python benchmarks/fuzz_tsk.py --n 2000 --mem-mb 1024             # the summary table
    python benchmarks/fuzz_tsk.py --n 2000 --mem-mb 1024 --json      # one JSON object
    python benchmarks/fuzz_tsk.py --seed 0 --case 17 --mem-mb 1024    # replay case 17, in-process

Seeds are built the way the shipped recipes make them, but in a second and without
training (random init, random biases): LeNet-300-100 and LeNet-5 on 1x8x8 inputs,
magnitude-pruned (``sparse`` forms), k-means shared (``shared`` / ``shared_sparse``),
product- and residual-quantized (``pq`` / ``rq``) and low-rank factorized (a surgery
plan), saved with ``torchshrink.format.save`` with and without Huffman coding.

Case ``i`` of ``--seed S`` is a pure function of ``(S, i)`` (``random.Random(f"{S}:{i}")``
and the deterministic seeds), so ``--case i`` regenerates and replays any finding. The
mutation families (``family`` in the output):

- raw bytes: bit flips, byte sets, inserts, deletions, truncations, appended bytes, the
  header length field, digits of the safetensors header, header padding;
- re-signed document edits (a valid ``header_crc32``, so the edit reaches the checks
  behind the checksum): record shape / dtype / form / params (index_bits, bits, subvector,
  pad, stages), stream meta (shape, count, stream_bits, alphabet, bits, dtype, codec),
  stream nbytes / crc32 / blob names, blob spans, zoo_spec fields (num_classes,
  input_shape, hidden, padding, name, extra kwargs), surgery plans (ranks, layers, ops),
  dropped / duplicated / renamed / reordered records;
- blob edits with a valid CRC: stream length changes, bit flips, Huffman length-table
  edits, padding bits, NaN / inf floats, re-encodings (bitpack <-> Huffman, which must
  load to the same tensors), codebook invariants (``codebook[0] != 0``, a second zero
  level), out-of-range codes, swapped streams;
- document bombs: zlib streams that inflate past the limit, a 1-60 MB padding string
  in a validly signed document, deep nesting, ``1e999``, 5000-digit ints, trailing bytes;
- decoded-size bombs (valid encodings that decode to huge arrays): relative-index sparse
  and shared_sparse streams of all-padding entries with 12-16 bit gaps Huffman coded at
  1 bit per entry, shared indices at 1 bit per weight, pq / rq codes at 1 bit per row
  with wide sub-vectors, each either in a record alone or in the records *and* the
  zoo_spec (hidden sizes / num_classes) so that ``load`` gets past its shape check.

Each case runs four loads, each timed and measured separately: ``read`` =
``read_tsk(path).state_dict()``, ``load`` = ``load(path)``, ``dense`` =
``load(path, dense=True)``, ``inspect`` = ``inspect_rows(path)``. When ``load`` and
``dense`` both succeed, both models run a fixed input (4 samples of the zoo_spec's input
shape, seeded) and their outputs must agree within float32 rounding (rtol 1e-4).

Workers and memory. ``--workers`` long-lived worker processes (this script with
``--worker``; importing torch per file would cost 4 s each) take cases from a queue and
are restarted when they die or hang (``--timeout-s`` per load, then SIGKILL). The
memory cap: ``RLIMIT_AS`` counts address space, and a worker holds ~800 MB of it after
importing torch and numba and compiling the kernels (thread stacks, the allocator's
arenas, mapped libraries), so a plain ``RLIMIT_AS = M MB`` would stop it from even
starting. Each worker therefore warms up on every seed first, and before *each* load sets
the soft ``RLIMIT_AS`` to its current address space + ``M`` MB (restored after the load):
a load may map at most M MB more than the worker held, whatever earlier loads left
behind. Peak RSS is measured per load by resetting the kernel's high-water mark
(``echo 5 > /proc/self/clear_refs``; ``ru_maxrss`` never goes down, so it cannot measure
a single load after a bigger one) and reading ``VmHWM`` after the load, minus ``VmRSS``
before it. A load is **over-memory** when that peak exceeds 4 x the declared model size +
64 MB, or it raised ``MemoryError`` (the cap hit). The declared size is the sum of
``numel x itemsize`` over the mutated file's records (the seed's when the mutated
document cannot be parsed); it is attacker-controlled, so decoded-size bombs are also
counted on their own: a bomb case whose load *succeeded* is a finding (``bomb_loaded``),
whatever its memory.

Outcomes per load: ``tsk`` (a clean ``TskFormatError``), ``ok`` (loaded; for raw-byte
mutations and exact re-encodings the tensors must equal the seed's, else ``changed``
is a finding: a corruption that loaded silently), ``other`` (any other exception,
grouped by type and first line), ``crash`` (the worker died), ``hang`` (timeout),
``memory``. The exit code is always 0: this is a measuring tool; the last line is a
one-line summary.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import math
import os
import queue
import random
import re
import resource
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

OPS = ("read", "load", "dense", "inspect")
MB = 1 << 20
INT_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")
ITEMSIZE = {"float32": 4, "float16": 2, "float64": 8, "bfloat16": 2, "int8": 1, "int16": 2, "int32": 4,
            "int64": 8, "uint8": 1, "bool": 1}
# Families whose successful load must reproduce the seed's tensors bit for bit.
EXACT_FAMILIES = {"raw", "reencode", "reorder"}


# =============================================================================================
# Container writing (independent of the loader, so that any field can be made wrong)
# =============================================================================================


def canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def crc_hex(data: bytes) -> str:
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def sign(doc: dict, spans: dict | None, blobs: dict[str, bytes]) -> bytes:
    """The document's JSON with a blob table and a valid header_crc32."""
    if spans is None:
        spans, pos = {}, 0
        for name, b in blobs.items():
            spans[name] = [pos, pos + len(b)]
            pos += len(b)
    full = {k: v for k, v in doc.items() if k not in ("header_crc32", "blobs")}
    full["blobs"] = spans
    full["header_crc32"] = crc_hex(canonical({k: v for k, v in full.items() if k != "header_crc32"}).encode())
    return canonical(full).encode()


def container(data: bytes, zdoc: bytes, *, pad: int = 0, entries: dict | None = None,
              meta: Any = None) -> bytes:
    header = {"__metadata__": {"torchshrink": "tsk/1"} if meta is None else meta}
    header.update(entries if entries is not None else {
        "data": {"dtype": "U8", "shape": [len(data)], "data_offsets": [0, len(data)]},
        "doc": {"dtype": "U8", "shape": [len(zdoc)], "data_offsets": [len(data), len(data) + len(zdoc)]},
    })
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((-len(h)) % 8 + pad)
    return struct.pack("<Q", len(h)) + h + data + zdoc


def pack_file(doc: dict, blobs: dict[str, bytes], *, spans: dict | None = None, pad: int = 0) -> bytes:
    return container(b"".join(blobs.values()), zlib.compress(sign(doc, spans, blobs), 6), pad=pad)


def pack_bits5(lengths: list[int] | Any) -> bytes:
    """5-bit LSB-first packing of a Huffman length table (as the format's bitpack)."""
    acc, nbits, out = 0, 0, bytearray()
    for v in lengths:
        acc |= int(v) << nbits
        nbits += 5
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def unpack_bits5(data: bytes, count: int) -> list[int]:
    acc = int.from_bytes(data, "little")
    return [(acc >> (5 * i)) & 31 for i in range(count)]


def huffman_const(shape: list[int], symbol: int, dtype: str) -> tuple[bytes, dict]:
    """A valid Huffman stream of ``prod(shape)`` copies of ``symbol``: one bit each."""
    n = math.prod(shape)
    lengths = [0] * (symbol + 1)
    lengths[symbol] = 1
    return pack_bits5(lengths) + bytes((n + 7) // 8), {
        "codec": "huffman", "shape": list(shape), "dtype": dtype, "alphabet": symbol + 1, "stream_bits": n}


def dense_stream(values: list[float] | Any, shape: list[int]) -> tuple[bytes, dict]:
    import numpy as np

    arr = np.asarray(values, dtype="<f4").reshape(shape)
    return arr.tobytes(), {"codec": "dense", "dtype": "float32", "shape": list(shape)}


# =============================================================================================
# Seeds
# =============================================================================================


class Seed:
    def __init__(self, name: str, path: Path) -> None:
        from torchshrink.format.container import read_container

        self.name, self.path = name, path
        self.raw = path.read_bytes()
        doc, blobs, _, _ = read_container(path)
        doc.pop("header_crc32", None)
        self.doc = json.loads(json.dumps(doc))
        self.blobs = {k: bytes(v) for k, v in blobs.items()}
        self.records = {r["name"]: r for r in self.doc["tensors"]}
        self.declared = declared_bytes(self.doc) or 0
        self.digest = ""

    def fresh(self) -> tuple[dict, dict[str, bytes]]:
        return json.loads(json.dumps(self.doc)), dict(self.blobs)


def declared_bytes(doc: Any) -> int | None:
    try:
        total = 0
        for r in doc["tensors"]:
            n = 1
            for d in r["shape"]:
                if not isinstance(d, int) or isinstance(d, bool) or d < 0:
                    return None
                n *= d
            total += n * ITEMSIZE.get(r["dtype"], 4)
        return total
    except Exception:  # noqa: BLE001 - any malformed document
        return None


def build_seeds(folder: Path) -> list[Seed]:
    import torch

    import torchshrink as ts
    from torchshrink.format import save

    def net(name: str, seed: int):
        torch.manual_seed(seed)
        m = ts.models.build_model(name, (1, 8, 8), 10)
        with torch.no_grad():
            for mod in m.modules():
                if getattr(mod, "bias", None) is not None:
                    mod.bias.normal_(0, 0.1)
        return m

    made: list[tuple[str, Any, dict]] = []
    m = net("lenet300", 0)
    ts.prune.magnitude(m, sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.8})
    made += [("lenet300_sparse_huff", m, {}), ("lenet300_sparse_plain", m, {"huffman": False})]
    m = net("lenet300", 1)
    ts.prune.magnitude(m, sparsity={"fc1": 0.9, "fc2": 0.9, "fc3": 0.8})
    ts.quantize.kmeans(m, bits=4)
    made += [("lenet300_shared_sparse", m, {"huffman": True}),
             ("lenet300_shared_bitpack", m, {"huffman": False, "codecs": {"*.weight": "bitpack"}})]
    m = net("lenet5", 2)
    ts.prune.magnitude(m, sparsity=0.8)
    ts.quantize.kmeans(m, bits={"conv*": 6, "fc*": 4})
    made.append(("lenet5_shared", m, {}))
    m = net("lenet5", 3)
    ts.quantize.product_quantize(m, subvector=4, codewords=16, layers=["fc1"])
    made.append(("lenet5_pq", m, {"huffman": True}))
    m = net("lenet300", 4)
    ts.quantize.residual_quantize(m, stages=2, codewords=8, subvector=4, layers=["fc2"])
    made.append(("lenet300_rq", m, {}))
    m = ts.factorize.low_rank(net("lenet300", 5), {"fc1": 8, "fc2": 6})
    ts.prune.magnitude(m, sparsity=0.5)
    made += [("lenet300_lowrank", m, {}), ("lenet300_lowrank_plain", m, {"huffman": False})]
    seeds = []
    for name, model, kw in made:
        path = folder / f"{name}.tsk"
        save(model, path, **kw)
        seeds.append(Seed(name, path))
        _SEEDS[name] = seeds[-1]
    return seeds


# =============================================================================================
# Mutations
# =============================================================================================

INTERESTING = [0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 24, 25, 31, 32, 33, 63, 64, 255, 256, 65535, 65536,
               1 << 20, 1 << 24, (1 << 31) - 1, 1 << 31, 1 << 32, 1 << 40, (1 << 40) + 1, 1 << 63, 1 << 64, -1,
               -(1 << 31)]
ODD = [None, True, False, 1.5, 5.0, "5", "", [], [1], {}, 1e308]


def any_value(r: random.Random, current: Any = None) -> Any:
    x = r.random()
    if isinstance(current, int) and not isinstance(current, bool) and x < 0.6:
        return r.choice([current + 1, current - 1, current * 2, current // 2, current + r.randint(2, 40), 0])
    if x < 0.88:
        return r.choice(INTERESTING)
    return r.choice(ODD)


def mutate_shape(r: random.Random, shape: Any) -> Any:
    shape = list(shape) if isinstance(shape, list) else [1]
    kind = r.choice(["inc", "dec", "dbl", "zero", "huge", "add", "drop", "neg", "odd", "swap", "empty", "value"])
    i = r.randrange(len(shape)) if shape else 0
    if not shape:
        return [r.choice([1, 2, 1 << 20])]
    if kind == "inc":
        shape[i] += 1
    elif kind == "dec":
        shape[i] -= 1
    elif kind == "dbl":
        shape[i] *= 2
    elif kind == "zero":
        shape[i] = 0
    elif kind == "huge":
        shape[i] = r.choice([1 << 20, 1 << 30, 1 << 32, 1 << 40, 1 << 41, 1 << 63])
    elif kind == "add":
        shape.insert(r.randint(0, len(shape)), r.choice([1, 1, 2]))
    elif kind == "drop":
        shape.pop(i)
    elif kind == "neg":
        shape[i] = -shape[i] - 1
    elif kind == "odd":
        shape[i] = r.choice([float(shape[i]), str(shape[i]), True, None, [shape[i]]])
    elif kind == "swap":
        shape = shape[::-1] if len(shape) > 1 else shape + [1]
    elif kind == "empty":
        shape = []
    else:
        shape[i] = any_value(r, shape[i])
    return shape


def streams_of(doc: dict) -> list[tuple[dict, str, dict]]:
    return [(rec, role, s) for rec in doc["tensors"] for role, s in rec["streams"].items()]


class Case:
    def __init__(self, seed: Seed, family: str, desc: str, raw: bytes, *, tensor: str | None = None,
                 declared: int | None = None, bomb: bool = False) -> None:
        self.seed, self.family, self.desc, self.raw = seed, family, desc, raw
        self.tensor, self.bomb = tensor, bomb
        self.declared = seed.declared if declared is None else declared

    def info(self) -> dict:
        return {"seed": self.seed.name, "family": self.family, "mutation": self.desc, "tensor": self.tensor,
                "bomb": self.bomb, "declared_bytes": self.declared, "file_bytes": len(self.raw)}


def signed(seed: Seed, family: str, desc: str, doc: dict, blobs: dict, **kw: Any) -> Case:
    spans, pad = kw.pop("spans", None), kw.pop("pad", 0)
    d = declared_bytes(doc)
    return Case(seed, family, desc, pack_file(doc, blobs, spans=spans, pad=pad), declared=d, **kw)


def m_raw(r: random.Random, seed: Seed) -> Case:
    buf = bytearray(seed.raw)
    (hlen,) = struct.unpack("<Q", seed.raw[:8])
    kind = r.choice(["flip", "flip", "flip_data", "flip_doc", "byte", "insert", "delete", "truncate", "append",
                     "hlen", "hdigit", "hbyte"])
    region = {"flip": (0, len(buf)), "flip_data": (8 + hlen, len(buf) - 1), "flip_doc": (len(buf) - 200, len(buf))}
    if kind in region:
        lo, hi = region[kind]
        pos = r.randrange(max(0, lo), hi)
        bit = r.randrange(8)
        buf[pos] ^= 1 << bit
        desc = f"flip bit {bit} of byte {pos}"
    elif kind == "byte":
        pos, val = r.randrange(len(buf)), r.randrange(256)
        buf[pos] = val
        desc = f"set byte {pos} to {val}"
    elif kind == "insert":
        pos = r.randrange(len(buf) + 1)
        ins = bytes(r.randrange(256) for _ in range(r.randint(1, 16)))
        buf[pos:pos] = ins
        desc = f"insert {ins.hex()} at {pos}"
    elif kind == "delete":
        pos = r.randrange(len(buf))
        n = r.randint(1, 64)
        del buf[pos : pos + n]
        desc = f"delete {n} bytes at {pos}"
    elif kind == "truncate":
        pos = r.randrange(len(buf))
        del buf[pos:]
        desc = f"truncate to {pos} bytes"
    elif kind == "append":
        n = r.choice([1, 7, 8, 4096])
        buf += bytes(n) if r.random() < 0.5 else bytes(r.randrange(256) for _ in range(n))
        desc = f"append {n} bytes"
    elif kind == "hlen":
        v = r.choice([0, 1, hlen - 8, hlen - 1, hlen + 1, hlen + 8, len(buf), len(buf) - 8, 1 << 32, (1 << 64) - 1])
        v = max(0, min(v, (1 << 64) - 1))
        buf[:8] = struct.pack("<Q", v)
        desc = f"header length {hlen} -> {v}"
    elif kind == "hdigit":
        digits = [m.start() for m in re.finditer(rb"[0-9]", seed.raw[8 : 8 + hlen])]
        pos = 8 + r.choice(digits)
        d = r.choice(b"0123456789")
        buf[pos] = d
        desc = f"header digit at {pos} -> {chr(d)}"
    else:
        pos, val = r.randrange(8, 8 + hlen), r.choice(b' {}[]",:0aZ\x00\xff')
        buf[pos] = val
        desc = f"header byte {pos} -> {val!r}"
    return Case(seed, "raw", desc, bytes(buf))


def m_record(r: random.Random, seed: Seed) -> Case:
    doc, blobs = seed.fresh()
    rec = r.choice(doc["tensors"])
    name = rec["name"]
    kind = r.choice(["shape", "shape", "shape", "dtype", "dtype", "form", "param", "param", "codec", "key"])
    if kind == "shape":
        old = rec["shape"]
        rec["shape"] = mutate_shape(r, old)
        desc = f"{name}: record shape {old} -> {rec['shape']}"
    elif kind == "dtype":
        old = rec["dtype"]
        rec["dtype"] = r.choice(list(ITEMSIZE) + ["complex64", "float8", "", None])
        desc = f"{name}: record dtype {old} -> {rec['dtype']}"
    elif kind == "form":
        old = rec["form"]
        rec["form"] = r.choice(["dense", "sparse", "shared", "shared_sparse", "pq", "rq", "tt", None])
        desc = f"{name}: form {old} -> {rec['form']}"
    elif kind == "param":
        key = r.choice(list(rec["params"]) + ["index_bits", "bits", "subvector", "pad", "stages"])
        old = rec["params"].get(key, "<absent>")
        if r.random() < 0.15 and key in rec["params"]:
            del rec["params"][key]
            desc = f"{name}: delete param {key}"
        else:
            rec["params"][key] = any_value(r, old if old != "<absent>" else None)
            desc = f"{name}: param {key} {old} -> {rec['params'][key]}"
    elif kind == "codec":
        rec["codec"] = r.choice(["", "dense", "x" * 10, None])
        desc = f"{name}: label codec -> {rec['codec']}"
    else:
        key = r.choice(["shape", "dtype", "form", "params", "streams", "name"])
        if r.random() < 0.5:
            del rec[key]
            desc = f"{name}: delete record key {key}"
        else:
            rec[key] = r.choice(ODD)
            desc = f"{name}: record {key} -> {rec[key]!r}"
    return signed(seed, "record", desc, doc, blobs, tensor=name)


META_KEYS = {"dense": ["shape", "dtype"], "raw": ["shape", "dtype"], "bitpack": ["shape", "dtype", "bits"],
             "huffman": ["shape", "dtype", "alphabet", "stream_bits"]}


def m_meta(r: random.Random, seed: Seed) -> Case:
    doc, blobs = seed.fresh()
    rec, role, s = r.choice(streams_of(doc))
    meta = s["meta"]
    codec = meta.get("codec")
    kind = r.choice(["field"] * 6 + ["codec", "delete", "nbytes", "crc", "blob"])
    where = f"{rec['name']}/{role}"
    if kind == "field":
        key = r.choice(META_KEYS.get(codec, ["shape"]) + ["count"])
        old = meta.get(key, "<absent>")
        if key == "shape":
            meta[key] = mutate_shape(r, old)
        elif key == "dtype":
            meta[key] = r.choice(list(INT_DTYPES) + ["float32", "float16", "float64", "bool", "bfloat16", "x"])
        else:
            meta[key] = any_value(r, old if isinstance(old, int) else None)
        desc = f"{where}: meta {key} {old} -> {meta[key]}"
    elif kind == "codec":
        old = codec
        meta["codec"] = r.choice(["dense", "raw", "bitpack", "huffman", "relative_sparse", "zstd", None])
        desc = f"{where}: meta codec {old} -> {meta['codec']}"
    elif kind == "delete":
        key = r.choice(list(meta))
        del meta[key]
        desc = f"{where}: delete meta {key}"
    elif kind == "nbytes":
        old = s["nbytes"]
        s["nbytes"] = any_value(r, old)
        desc = f"{where}: nbytes {old} -> {s['nbytes']}"
    elif kind == "crc":
        s["crc32"] = r.choice(["00000000", "ABCDEF01", "123", 5, None, s["crc32"][::-1]])
        desc = f"{where}: crc32 -> {s['crc32']!r}"
    else:
        old = s["blob"]
        s["blob"] = r.choice([b for b in blobs if b != old] + ["nope", 7])
        desc = f"{where}: blob {old} -> {s['blob']!r}"
    return signed(seed, "meta", desc, doc, blobs, tensor=rec["name"])


def m_spans(r: random.Random, seed: Seed) -> Case:
    doc, blobs = seed.fresh()
    spans, pos = {}, 0
    for name, b in blobs.items():
        spans[name] = [pos, pos + len(b)]
        pos += len(b)
    name = r.choice(list(spans))
    kind = r.choice(["shift", "grow", "shrink", "swap", "odd", "drop", "extra"])
    if kind == "shift":
        delta = r.choice([-1, 1, 8])
        spans[name] = [spans[name][0] + delta, spans[name][1] + delta]
    elif kind == "grow":
        spans[name][1] += r.choice([1, 8, 1 << 20])
    elif kind == "shrink":
        spans[name][1] -= 1
    elif kind == "swap":
        other = r.choice(list(spans))
        spans[name], spans[other] = spans[other], spans[name]
    elif kind == "odd":
        spans[name] = r.choice([[1, 0], [0], "0:1", [0.0, 1.0], None, [-1, 3]])
    elif kind == "drop":
        del spans[name]
    else:
        spans["ghost"] = [0, 0]
    return signed(seed, "spans", f"blob span {name}: {kind} -> {spans.get(name)}", doc, blobs, spans=spans,
                  tensor=name.split(":")[0])


def m_arch(r: random.Random, seed: Seed) -> Case:
    doc, blobs = seed.fresh()
    arch = doc["architecture"]
    spec = arch["zoo_spec"]
    kind = r.choice(["num_classes", "input_shape", "hidden", "kwarg", "name", "spec", "surgery", "surgery",
                     "surgery"])
    if kind == "num_classes":
        old = spec["num_classes"]
        spec["num_classes"] = r.choice([0, 1, 9, 11, 100, 10**6, 10**12, -1, "10", 2.5, None, True])
        desc = f"zoo_spec num_classes {old} -> {spec['num_classes']!r}"
    elif kind == "input_shape":
        spec["input_shape"] = r.choice([[1, 8, 9], [3, 8, 8], [1, 8], [1, 16, 16], [1, 4, 4], [1, 3, 3],
                                        [1, 1 << 20, 1 << 20], [0, 8, 8], [1, 8, 8, 1], "1x8x8"])
        desc = f"zoo_spec input_shape -> {spec['input_shape']!r}"
    elif kind == "hidden":
        if "hidden" in spec["kwargs"]:
            spec["kwargs"]["hidden"] = r.choice([[300, 101], [301, 100], [100, 300], [300], [1 << 20, 100],
                                                 [1 << 16, 1 << 16], [0, 100], [-1, 100], [300, 100, 10], "300"])
            desc = f"zoo_spec hidden -> {spec['kwargs']['hidden']!r}"
        else:
            spec["kwargs"]["padding"] = r.choice([0, 1, 3, -1, None, 2.0])
            desc = f"zoo_spec padding -> {spec['kwargs']['padding']!r}"
    elif kind == "kwarg":
        key = r.choice(["dropout", "extra", "padding", "hidden"])
        if r.random() < 0.3 and key in spec["kwargs"]:
            del spec["kwargs"][key]
            desc = f"zoo_spec delete kwarg {key}"
        else:
            spec["kwargs"][key] = r.choice([0.5, 1.0, -0.1, None, "x", [1], 10**9])
            desc = f"zoo_spec kwarg {key} -> {spec['kwargs'][key]!r}"
    elif kind == "name":
        spec["name"] = r.choice(["lenet5", "lenet300", "lenet_300_100", "resnet20", "vgg16", "alexnet", None, 3])
        desc = f"zoo_spec name -> {spec['name']!r}"
    elif kind == "spec":
        arch["zoo_spec"] = r.choice([None, {}, [], "lenet300", {**spec, "extra": 1}])
        desc = f"zoo_spec -> {arch['zoo_spec']!r}"[:200]
    else:
        plan = arch.get("surgery")
        if not plan:
            arch["surgery"] = r.choice([[{"op": "low_rank", "layer": "fc1", "rank": 8}], [], "x", [{}],
                                        [{"op": "low_rank", "layer": "fc3", "rank": 5}]])
            desc = f"add surgery {arch['surgery']!r}"
        else:
            i = r.randrange(len(plan))
            step = plan[i]
            sub = r.choice(["rank", "rank", "layer", "op", "extra", "dup", "drop", "none"])
            if sub == "rank":
                step["rank"] = r.choice([step["rank"] + 1, step["rank"] - 1, 0, 1, 10**9, -1, 2.5, "8", None])
            elif sub == "layer":
                step["layer"] = r.choice(["fc2", "fc3", "fc1", "fc1.first", "nope", "", None])
            elif sub == "op":
                step["op"] = r.choice(["svd", "prune", None, "LOW_RANK"])
            elif sub == "extra":
                step["init"] = True
            elif sub == "dup":
                plan.insert(i, dict(step))
            elif sub == "drop":
                plan.pop(i)
            else:
                arch["surgery"] = None
            desc = f"surgery step {i} {sub} -> {arch['surgery']!r}"
    return signed(seed, "arch", desc, doc, blobs)


def m_tensors(r: random.Random, seed: Seed) -> Case:
    doc, blobs = seed.fresh()
    t = doc["tensors"]
    kind = r.choice(["drop", "dup", "rename", "reorder", "reorder"])
    i = r.randrange(len(t))
    name = t[i]["name"]
    if kind == "drop":
        t.pop(i)
        for s in seed.records[name]["streams"].values():
            blobs.pop(s["blob"], None)
    elif kind == "dup":
        t.insert(i, json.loads(json.dumps(t[i])))
    elif kind == "rename":
        t[i]["name"] = r.choice([name + "x", "fc9.weight", "", name.upper()])
    else:
        r.shuffle(t)
        return signed(seed, "reorder", "shuffle the tensor records", doc, blobs)
    return signed(seed, "tensors", f"{kind} record {name}", doc, blobs, tensor=name)


def _decode_stream(seed: Seed, rec: dict, role: str):
    from torchshrink.format import decode

    s = rec["streams"][role]
    return decode(seed.blobs[s["blob"]], s["meta"])


def _set_stream(doc: dict, blobs: dict, rec_name: str, role: str, data: bytes, meta: dict | None = None) -> None:
    rec = next(x for x in doc["tensors"] if x["name"] == rec_name)
    s = rec["streams"][role]
    blobs[s["blob"]] = data
    s["nbytes"], s["crc32"] = len(data), crc_hex(data)
    if meta is not None:
        s["meta"] = meta


def m_blob(r: random.Random, seed: Seed) -> Case:
    """Blob content edits with a valid CRC (and nbytes)."""
    import numpy as np

    from torchshrink.format import encode_dense, encode_huffman
    from torchshrink.format.bitpack import encode_bitpack

    doc, blobs = seed.fresh()
    rec, role, s = r.choice(streams_of(doc))
    name, data, meta = rec["name"], bytearray(blobs[s["blob"]]), s["meta"]
    codec = meta.get("codec")
    choices = ["len", "len", "flip", "zero"]
    if codec == "huffman":
        choices += ["htable", "htable", "hpad", "reencode"]
    if codec == "bitpack":
        choices += ["reencode", "bpad", "oob"]
    if codec == "dense":
        choices += ["special"]
    if role == "codebook":
        choices += ["cb0", "cb0", "cbzero"]
    kind = r.choice(choices)
    family = "blob"
    if kind == "len":
        k = r.choice([1, 1, 2, 3, 4, 8, 64])
        if r.random() < 0.5 or len(data) <= k:
            data += bytes(k) if r.random() < 0.5 else bytes(r.randrange(256) for _ in range(k))
            desc = f"{name}/{role}: append {k} bytes (nbytes+crc fixed)"
        else:
            data = data[:-k] if r.random() < 0.7 else data[k:]
            desc = f"{name}/{role}: cut {k} bytes (nbytes+crc fixed)"
        _set_stream(doc, blobs, name, role, bytes(data))
    elif kind == "flip" and data:
        pos, bit = r.randrange(len(data)), r.randrange(8)
        data[pos] ^= 1 << bit
        _set_stream(doc, blobs, name, role, bytes(data))
        desc = f"{name}/{role}: flip bit {bit} of blob byte {pos} (crc fixed)"
    elif kind == "zero" or (kind == "flip" and not data):
        _set_stream(doc, blobs, name, role, bytes(len(data)))
        desc = f"{name}/{role}: zero the blob (crc fixed)"
    elif kind == "htable":
        a = meta["alphabet"]
        tb = (5 * a + 7) // 8
        lengths = unpack_bits5(bytes(data[:tb]), a)
        how = r.choice(["one", "one", "all1", "zero", "max"])
        if how == "one":
            j = r.randrange(a)
            lengths[j] = r.randrange(32)
        elif how == "all1":
            lengths = [1] * a
        elif how == "zero":
            lengths = [0] * a
        else:
            lengths = [24] * a
        data[:tb] = pack_bits5(lengths)[:tb]
        _set_stream(doc, blobs, name, role, bytes(data))
        desc = f"{name}/{role}: Huffman length table edit '{how}' -> {lengths[:8]}..."
    elif kind in ("hpad", "bpad"):
        data[-1] |= 1
        data[-1] |= 0x80
        _set_stream(doc, blobs, name, role, bytes(data))
        desc = f"{name}/{role}: set padding bits of the last byte (crc fixed)"
    elif kind == "reencode":
        arr = _decode_stream(seed, rec, role)
        if codec == "huffman":
            bits = max(1, int(arr.max()).bit_length()) if arr.size else 1
            new, nmeta = encode_bitpack(arr, bits)
        else:
            new, nmeta = encode_huffman(arr)
        _set_stream(doc, blobs, name, role, new, nmeta)
        family = "reencode"
        desc = f"{name}/{role}: re-encode {codec} -> {nmeta['codec']} (same values)"
    elif kind == "oob":
        arr = _decode_stream(seed, rec, role).copy()
        top = (1 << meta["bits"]) - 1
        if arr.size:
            arr.reshape(-1)[r.randrange(arr.size)] = top
        new, nmeta = encode_bitpack(arr, meta["bits"])
        _set_stream(doc, blobs, name, role, new, nmeta)
        desc = f"{name}/{role}: one code set to {top} (max for {meta['bits']} bits)"
    elif kind == "special":
        arr = _decode_stream(seed, rec, role).copy()
        v = r.choice([float("nan"), float("inf"), -float("inf"), -0.0, 3e38])
        if arr.size:
            arr.reshape(-1)[r.randrange(arr.size)] = v
        new, nmeta = encode_dense(arr)
        _set_stream(doc, blobs, name, role, new, nmeta)
        desc = f"{name}/{role}: one float set to {v}"
    else:  # codebook invariants
        cb = _decode_stream(seed, rec, role).copy()
        if kind == "cb0":
            cb[0] = r.choice([0.1, -0.25, 1e-30, float(cb[-1])])
            desc = f"{name}/{role}: codebook[0] = {cb[0]} (must be 0)"
        else:
            j = r.randrange(1, cb.size) if cb.size > 1 else 0
            cb[j] = 0.0
            desc = f"{name}/{role}: codebook[{j}] = 0 (a second zero level)"
        new, nmeta = encode_dense(np.ascontiguousarray(cb, dtype=np.float32))
        _set_stream(doc, blobs, name, role, new, nmeta)
        family = "codebook"
    return signed(seed, family, desc, doc, blobs, tensor=name)


def m_swap(r: random.Random, seed: Seed) -> Case:
    doc, blobs = seed.fresh()
    (r1, ro1, s1), (r2, ro2, s2) = r.sample(streams_of(doc), 2)
    s1["blob"], s2["blob"] = s2["blob"], s1["blob"]
    if r.random() < 0.5:  # also move the meta, so only the role/record is wrong
        for k in ("meta", "nbytes", "crc32"):
            s1[k], s2[k] = s2[k], s1[k]
    return signed(seed, "swap", f"swap streams {r1['name']}/{ro1} <-> {r2['name']}/{ro2}", doc, blobs,
                  tensor=r1["name"])


_BOMB_CACHE: dict[tuple, bytes] = {}
_SEEDS: dict[str, Seed] = {}


def m_docbomb(r: random.Random, seed: Seed) -> Case:
    doc, blobs = seed.fresh()
    data = b"".join(blobs.values())
    text = sign(doc, None, blobs)
    kind = r.choice(["inflate", "inflate", "pad", "pad", "nest", "float", "bigint", "trailing", "truncz", "notobj",
                     "dupkey", "nonascii", "hpad"])
    if kind in ("inflate", "pad"):  # built once per size, always on the same (smallest) seed
        seed = _SEEDS.get("lenet300_shared_sparse", seed)
        doc, blobs = seed.fresh()
        data = b"".join(blobs.values())
        text = sign(doc, None, blobs)
    if kind == "inflate":
        n = r.choice([65 * MB, 256 * MB, 1024 * MB])
        key = ("inflate", seed.name, n)
        if key not in _BOMB_CACHE:
            z = zlib.compressobj(9)
            chunk = b" " * MB
            out = [z.compress(text)] + [z.compress(chunk) for _ in range(n // MB)]
            _BOMB_CACHE[key] = b"".join(out) + z.flush()
        return Case(seed, "docbomb", f"document + {n // MB} MB of spaces, zlib ({len(_BOMB_CACHE[key])} B)",
                    container(data, _BOMB_CACHE[key]), bomb=True)
    if kind == "pad":
        n = r.choice([1 * MB, 16 * MB, 60 * MB])
        key = ("pad", seed.name, n)
        if key not in _BOMB_CACHE:
            d2 = dict(doc)
            d2["zz_padding"] = "a" * n
            _BOMB_CACHE[key] = zlib.compress(sign(d2, None, blobs), 9)
        return Case(seed, "docbomb", f"signed document with a {n // MB} MB padding string "
                    f"({len(_BOMB_CACHE[key])} B compressed)", container(data, _BOMB_CACHE[key]))
    if kind == "hpad":
        n = r.choice([1 * MB, 32 * MB])
        return Case(seed, "docbomb", f"safetensors header padded with {n // MB} MB of spaces",
                    container(data, zlib.compress(text), pad=n))
    if kind == "nest":
        depth = r.choice([1000, 100000])
        t = text[:-1] + b',"zz":' + b"[" * depth + b"]" * depth + b"}"
        return Case(seed, "docbomb", f"{depth}-deep nested list in the document", container(data, zlib.compress(t)))
    if kind == "float":
        t = text.replace(b'"num_classes":10', b'"num_classes":1e999', 1)
        if t == text:
            t = text[:-1] + b',"zz":1e999}'
        return Case(seed, "docbomb", "document holds the literal 1e999 (inf)", container(data, zlib.compress(t)))
    if kind == "bigint":
        t = text[:-1] + b',"zz":' + b"9" * 5000 + b"}"
        return Case(seed, "docbomb", "document holds a 5000-digit int", container(data, zlib.compress(t)))
    if kind == "trailing":
        return Case(seed, "docbomb", "zlib document + 3 trailing bytes",
                    container(data, zlib.compress(text) + b"abc"))
    if kind == "truncz":
        z = zlib.compress(text)
        return Case(seed, "docbomb", "zlib document cut by 4 bytes", container(data, z[:-4]))
    if kind == "notobj":
        t = r.choice([b"[]", b"1", b'"x"', b"null"])
        return Case(seed, "docbomb", f"document is {t.decode()}", container(data, zlib.compress(t)))
    if kind == "dupkey":
        t = text[:-1] + b',"format":"tsk/1"}'
        return Case(seed, "docbomb", "document repeats the key 'format'", container(data, zlib.compress(t)))
    t = text[:-1] + ',"zz":"\u00e9"}'.encode("utf-8")
    return Case(seed, "docbomb", "document holds a non-ASCII byte", container(data, zlib.compress(t)))


# --- decoded-size bombs ---------------------------------------------------------------------


def sparse_bomb(numel: int, b: int, shared: bool) -> tuple[dict, dict[str, tuple[bytes, dict]]]:
    """(params, streams) of an all-padding relative-index stream covering ``numel`` positions."""
    period = 1 << b
    count = numel // period
    gdtype = "uint8" if b <= 8 else "uint16"
    if count:
        gaps = huffman_const([count], period - 1, gdtype)
    else:
        gaps = (b"", {"codec": "huffman", "shape": [0], "dtype": gdtype, "alphabet": 0, "stream_bits": 0})
    if shared:
        codes = huffman_const([count], 0, "uint8") if count else (
            b"", {"codec": "huffman", "shape": [0], "dtype": "uint8", "alphabet": 0, "stream_bits": 0})
        return {"bits": 1, "index_bits": b}, {"codebook": dense_stream([0.0, 0.5], [2]), "gaps": gaps,
                                              "codes": codes}
    return {"index_bits": b}, {"gaps": gaps, "values": dense_stream([0.0] * count, [count])}


def put_record(doc: dict, blobs: dict, name: str, shape: list[int], form: str, params: dict,
               streams: dict[str, tuple[bytes, dict]]) -> None:
    rec = next(x for x in doc["tensors"] if x["name"] == name)
    for s in rec["streams"].values():
        blobs.pop(s["blob"], None)
    rec.update(shape=list(shape), dtype="float32", form=form, params=params, codec=f"bomb:{form}", streams={})
    for role, (data, meta) in streams.items():
        blob = f"{name}:{role}"
        blobs[blob] = data
        rec["streams"][role] = {"blob": blob, "meta": meta, "nbytes": len(data), "crc32": crc_hex(data)}


def record_bomb(r: random.Random, name: str, shape: list[int], kind: str) -> tuple[str, dict, dict]:
    numel = math.prod(shape)
    if kind == "pq" and len(shape) == 2 and 1 <= shape[1] <= (1 << 21):
        out, d = shape
        data, meta = dense_stream([0.25] * d, [1, 1, d])
        return "pq", {"subvector": d, "pad": 0}, {"codebooks": (data, meta),
                                                  "codes": huffman_const([out, 1], 0, "uint8")}
    if kind == "rq" and len(shape) == 2 and 1 <= shape[1] <= (1 << 21):
        out, d = shape
        stages = max(1, min(r.choice([2, 8, 64]), (8 * MB) // (4 * d)))  # codebooks stay under 8 MB
        streams = {}
        for t in range(stages):
            streams[f"stages.{t}.codebooks"] = dense_stream([0.25] * d, [1, 1, d])
            streams[f"stages.{t}.codes"] = huffman_const([out, 1], 0, "uint8")
        return "rq", {"subvector": d, "pad": 0, "stages": stages}, streams
    if kind == "shared" and 0 < numel <= (1 << 27):  # one bit per weight: at most a 16 MB stream
        data, meta = dense_stream([0.0, 0.5], [2])
        return "shared", {"bits": 1}, {"codebook": (data, meta), "indices": huffman_const(shape, 1, "uint8")}
    b = r.choice([12, 16, 16])
    params, streams = sparse_bomb(numel, b, kind == "shared_sparse")
    return ("shared_sparse" if kind == "shared_sparse" else "sparse"), params, streams


def m_bomb(r: random.Random, seed: Seed) -> Case:
    doc, blobs = seed.fresh()
    spec = doc["architecture"]["zoo_spec"]
    kinds = ["sparse", "sparse", "shared_sparse", "shared_sparse", "shared", "pq", "rq"]
    mode = r.choice(["record", "record", "both"])
    if mode == "both" and spec["name"] == "lenet300" and not doc["architecture"].get("surgery"):
        h1 = r.choice([1 << 14, 1 << 16, 1 << 18, 1 << 20])
        h2 = r.choice([100, 1 << 10, 1 << 14, 1 << 16])
        nc = r.choice([10, 10, 1 << 16])
        spec["kwargs"]["hidden"] = [h1, h2]
        spec["num_classes"] = nc
        n_in = math.prod(spec["input_shape"])
        shapes = {"fc1.weight": [h1, n_in], "fc1.bias": [h1], "fc2.weight": [h2, h1], "fc2.bias": [h2],
                  "fc3.weight": [nc, h2], "fc3.bias": [nc]}
        kind = r.choice(kinds)
        for name, shape in shapes.items():
            k = kind if name.endswith("weight") else "sparse"
            form, params, streams = record_bomb(r, name, shape, k)
            put_record(doc, blobs, name, shape, form, params, streams)
        desc = f"zoo_spec hidden=[{h1}, {h2}], num_classes={nc} and every record a {kind} bomb of that shape"
        return signed(seed, "bomb", desc, doc, blobs, bomb=True, tensor="fc1.weight")
    rec = r.choice([x for x in doc["tensors"] if len(x["shape"]) >= 1])
    name = rec["name"]
    kind = r.choice(kinds)
    if kind in ("pq", "rq"):
        shape = [r.choice([1 << 16, 1 << 18, 1 << 20, 1 << 22]), r.choice([64, 256, 1024])]
    elif kind == "shared":
        shape = [r.choice([1 << 20, 1 << 24, 1 << 26])]
    else:
        shape = [r.choice([1 << 10, 1 << 12, 1 << 14, 1 << 16]), r.choice([1 << 14, 1 << 16])]
    form, params, streams = record_bomb(r, name, shape, kind)
    put_record(doc, blobs, name, shape, form, params, streams)
    desc = f"{name}: a {form} bomb of shape {shape} ({math.prod(shape):,} elements)"
    return signed(seed, "bomb", desc, doc, blobs, bomb=True, tensor=name)


def m_invariant(r: random.Random, seed: Seed) -> Case:
    """Contract checks aimed at: codebook[0] != 0, a second zero level, exact re-encodings, record
    dtypes that disagree with a dense float stream."""
    kind = r.choice(["codebook", "codebook", "reencode", "dtype", "dtype"])
    if kind == "dtype":
        doc, blobs = seed.fresh()
        rec = r.choice([x for x in doc["tensors"] if x["form"] == "dense"
                        and x["streams"]["data"]["meta"]["codec"] == "dense"])
        old = rec["dtype"]
        rec["dtype"] = r.choice(["bool", "int64", "uint8", "int8", "bfloat16", "float16", "float64"])
        return signed(seed, "dtype", f"{rec['name']}: record dtype {old} -> {rec['dtype']} on a dense float32 "
                      "stream", doc, blobs, tensor=rec["name"])
    want = "codebook" if kind == "codebook" else None
    for _ in range(50):
        rec = r.choice(seed.doc["tensors"])
        roles = [ro for ro, s in rec["streams"].items()
                 if (ro == "codebook" if want else s["meta"]["codec"] in ("huffman", "bitpack"))]
        if roles:
            break
    else:
        raise KeyError("no such stream")
    # Re-run m_blob on a generator whose choice of stream and of edit is forced.
    role = r.choice(roles)
    sub = r.choice(["cb0", "cb0", "cbzero"]) if want else "reencode"
    forced = _Forced(r, [(rec, role, rec["streams"][role]), sub])
    return m_blob(forced, seed)


class _Forced(random.Random):
    """A Random whose first choice() calls return fixed values (the stream, then the edit)."""

    def __init__(self, base: random.Random, first: list) -> None:
        super().__init__(base.random())
        self._first = list(first)

    def choice(self, seq):
        if self._first:
            want = self._first.pop(0)
            if isinstance(want, tuple):  # a stream of the seed: find the same one in the fresh copy
                return next(x for x in seq if x[0]["name"] == want[0]["name"] and x[1] == want[1])
            return want
        return super().choice(seq)


FAMILIES = [(m_raw, 22), (m_record, 15), (m_meta, 13), (m_spans, 4), (m_arch, 10), (m_tensors, 4), (m_blob, 12),
            (m_swap, 3), (m_docbomb, 3), (m_bomb, 8), (m_invariant, 6)]


def make_case(seeds: list[Seed], seed: int, i: int) -> Case:
    r = random.Random(f"{seed}:{i}")
    fn = r.choices([f for f, _ in FAMILIES], weights=[w for _, w in FAMILIES])[0]
    s = r.choice(seeds)
    for _ in range(20):
        try:
            case = fn(r, s)
            if len(case.raw) <= 40 * MB:
                return case
        except (KeyError, IndexError, ValueError, TypeError, StopIteration):
            pass
        s = r.choice(seeds)  # a mutation that does not apply to this seed
    return m_raw(r, s)


# =============================================================================================
# Worker
# =============================================================================================


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        m = re.search(rf"^{field}:\s+(\d+)", fh.read(), re.MULTILINE)
    return int(m.group(1)) if m else 0


class Runner:
    """Runs the four loads of one file, each under the address-space cap, measuring peak RSS."""

    def __init__(self, mem_mb: int) -> None:
        import torch

        from torchshrink.errors import TskFormatError
        from torchshrink.format import inspect_rows, load, read_tsk

        torch.set_num_threads(1)
        self.torch, self.TskFormatError = torch, TskFormatError
        self.read_tsk, self.load, self.inspect_rows = read_tsk, load, inspect_rows
        self.mem_mb = mem_mb
        try:
            self._trim = ctypes.CDLL("libc.so.6").malloc_trim
        except OSError:
            self._trim = None
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.outputs: dict[str, Any] = {}

    def _reset(self) -> int:
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        if self.hwm_reset:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        return _status_kb("VmRSS")

    def _forward(self, model: Any, path: str) -> Any:
        torch = self.torch
        shape = self.read_tsk(path).zoo_spec["input_shape"]
        if math.prod(shape) > (1 << 22):
            return None
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return model(torch.randn(4, *shape, generator=g))

    def digest(self, state: dict) -> str:
        h = hashlib.sha1()
        for k, t in sorted(state.items()):
            h.update(f"{k}|{t.dtype}|{list(t.shape)}|".encode())
            h.update(t.detach().contiguous().reshape(-1).view(self.torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def run(self, op: str, path: str, key: str) -> dict:
        res: dict[str, Any] = {"op": op}
        rss0 = self._reset()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = _status_kb("VmSize") * 1024 + self.mem_mb * MB
        if self.mem_mb > 0:
            resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
        t0 = time.perf_counter()
        value = None
        try:
            if op == "read":
                value = self.read_tsk(path).state_dict()
            elif op == "load":
                value = self.load(path)
            elif op == "dense":
                value = self.load(path, dense=True)
            else:
                value = self.inspect_rows(path)
            res["status"] = "ok"
        except self.TskFormatError as exc:
            res.update(status="tsk", msg=str(exc)[:400])
        except MemoryError as exc:
            res.update(status="memory", type="MemoryError", msg=str(exc)[:300])
        except BaseException as exc:  # noqa: BLE001 - this is what we are looking for
            res.update(status="other", type=type(exc).__name__, msg=str(exc)[:400],
                       tb="".join(traceback.format_exception(exc)[-6:])[-2500:])
        res["seconds"] = round(time.perf_counter() - t0, 4)
        res["peak_mb"] = round(max(0, _status_kb("VmHWM") - rss0) / 1024, 1) if self.hwm_reset else None
        try:
            if res["status"] == "ok" and op == "read":
                res["digest"] = self.digest(value)
            if res["status"] == "ok" and op in ("load", "dense"):
                try:
                    out = self._forward(value, path)
                except MemoryError:
                    res.update(status="memory", type="MemoryError", msg="in the forward pass")
                    out = None
                except BaseException as exc:  # noqa: BLE001
                    res.update(status="forward", type=type(exc).__name__, msg=str(exc)[:400],
                               tb="".join(traceback.format_exception(exc)[-6:])[-2500:])
                    out = None
                if op == "load":
                    self.outputs = {key: out}
                elif key in self.outputs and self.outputs[key] is not None and out is not None:
                    a, b = self.outputs.pop(key), out
                    torch = self.torch
                    same = a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * max(
                        1.0, float(b.abs().nan_to_num(0, 0, 0).max())), equal_nan=True))
                    res["agree"] = same
                    if not same:
                        res["max_diff"] = float((a - b).abs().max()) if a.shape == b.shape else "shape"
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            value = None
        return res


def worker_main(mem_mb: int, warm: list[str]) -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # stray prints must not break the protocol
    runner = Runner(0)
    for path in warm:  # compile every numba kernel and touch every code path before measuring
        for op in OPS:
            runner.run(op, path, path)
    gc.collect()
    gc.freeze()  # torch + numba hold ~1M objects: without this every gc.collect() costs 0.2 s
    runner.mem_mb = mem_mb
    out.write(json.dumps({"ready": True, "vm_mb": _status_kb("VmSize") // 1024,
                          "rss_mb": _status_kb("VmRSS") // 1024, "hwm_reset": runner.hwm_reset}) + "\n")
    out.flush()
    for line in sys.stdin:
        task = json.loads(line)
        for op in task["ops"]:
            out.write(json.dumps(runner.run(op, task["path"], task["key"])) + "\n")
            out.flush()


class Worker:
    def __init__(self, mem_mb: int, warm: list[str], log: list[str]) -> None:
        self.mem_mb, self.warm, self.log = mem_mb, warm, log
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.info: dict = {}
        self.restarts = -1
        self.start()

    def start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
                   MALLOC_ARENA_MAX="2", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "--mem-mb",
                                      str(self.mem_mb), *self.warm], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        self.buf = b""
        self.restarts += 1
        msg = self.readline(300)
        if not isinstance(msg, dict) or not msg.get("ready"):
            raise RuntimeError(f"fuzz worker failed to start: {msg!r}")
        self.info = msg

    def readline(self, timeout: float) -> dict | str:
        """One JSON line, or 'hang' / 'crash:<how>'."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return "hang"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    rc = self.proc.wait()
                    how = f"signal {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"
                    return f"crash:{how}"
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def run(self, path: str, key: str, timeout: float) -> list[dict]:
        results, ops = [], list(OPS)
        while ops:
            try:
                self.proc.stdin.write((json.dumps({"path": path, "key": key, "ops": ops}) + "\n").encode())
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError):
                self.kill()
                self.start()
                continue
            while ops:
                msg = self.readline(timeout)
                if isinstance(msg, dict):
                    results.append(msg)
                    ops.pop(0)
                    continue
                op = ops.pop(0)
                if msg == "hang":
                    results.append({"op": op, "status": "hang", "seconds": timeout})
                else:
                    results.append({"op": op, "status": "crash", "type": msg.split(":", 1)[1]})
                self.kill()
                self.start()
                break
        return results


# =============================================================================================
# Driver
# =============================================================================================


def _group_key(res: dict) -> str:
    first = (res.get("msg") or "").splitlines()[0] if res.get("msg") else ""
    first = re.sub(r"/[^\s'\"]*\.tsk", "<file>", first)
    first = re.sub(r"\d[\d,_]*", "#", first)
    return f"{res.get('type')}: {first[:160]}"


def classify(case: Case, results: list[dict], seed_digest: str) -> dict:
    """Add per-load verdicts (the finding kinds) to a case's results."""
    findings = []
    budget = 4 * (case.declared or case.seed.declared) / MB + 64
    by_op = {r["op"]: r for r in results}
    for res in results:
        st = res["status"]
        if st == "other":
            findings.append(("other", res))
        elif st == "forward":
            findings.append(("forward", res))
        elif st in ("crash", "hang"):
            findings.append((st, res))
        elif st == "memory":
            findings.append(("memory", res))
        if res.get("peak_mb") is not None and res["peak_mb"] > budget and st != "memory":
            findings.append(("memory", {**res, "type": "peak", "msg": f"peak {res['peak_mb']} MB > budget "
                                                                      f"{budget:.0f} MB ({st})"}))
        if st == "ok" and case.bomb:
            findings.append(("bomb_loaded", res))
        if res.get("agree") is False:
            findings.append(("disagree", {**res, "msg": f"load vs load(dense=True) outputs differ by "
                                                        f"{res.get('max_diff')}"}))
    lo, de = by_op.get("load"), by_op.get("dense")
    if lo and de and {lo["status"], de["status"]} == {"ok", "tsk"}:
        bad = lo if lo["status"] == "tsk" else de
        findings.append(("disagree", {**bad, "msg": f"only load{'(dense=True)' if bad is de else '()'} refused: "
                                                    f"{bad.get('msg')}"}))
    rd = by_op.get("read")
    if rd and rd["status"] == "ok" and case.family in EXACT_FAMILIES and rd.get("digest") != seed_digest:
        findings.append(("changed", {**rd, "msg": "loaded with tensors that differ from the seed's"}))
    if case.tensor and "record name" not in case.desc and "record key name" not in case.desc:
        for res in results:
            if res["status"] == "tsk" and case.family in ("record", "meta", "blob", "codebook", "bomb") \
                    and case.tensor not in res.get("msg", ""):
                findings.append(("unnamed", res))
                break
    return {"findings": findings, "budget_mb": budget}


def drive(args: argparse.Namespace) -> dict:
    t_start = time.time()
    work = Path(tempfile.mkdtemp(prefix="fuzz_tsk_"))
    keep = Path(args.keep_dir or tempfile.mkdtemp(prefix=f"fuzz_tsk_findings_s{args.seed}_"))
    keep.mkdir(parents=True, exist_ok=True)
    seeds = build_seeds(work / "seeds")
    from torchshrink.format import read_tsk

    probe = Runner(0)
    for s in seeds:
        s.digest = probe.digest(read_tsk(s.path).state_dict())
    warm = [str(s.path) for s in seeds]
    log: list[str] = []
    t_seeds = time.time() - t_start
    tasks: queue.Queue = queue.Queue()
    for i in range(args.n):
        tasks.put(i)
    lock = threading.Lock()
    gen_lock = threading.Lock()
    workers: list[Worker] = []
    counts: Counter = Counter()
    fam_counts: dict[str, Counter] = defaultdict(Counter)
    fam_seconds: Counter = Counter()
    groups: dict[str, dict] = {}
    agree: Counter = Counter()
    peaks: list = []

    def record(i: int, case: Case, res: list[dict]) -> None:
        verdict = classify(case, res, case.seed.digest)
        for r in res:
            counts[r["status"]] += 1
            fam_counts[case.family][r["status"]] += 1
            fam_seconds[case.family] += r.get("seconds", 0)
            if r.get("peak_mb") is not None:
                peaks.append((r["peak_mb"], i, r["op"], case.desc))
            if "agree" in r:
                agree["same" if r["agree"] else "differ"] += 1
        for kind, r in verdict["findings"]:
            what = _group_key(r) if kind in ("other", "forward", "memory", "crash") else case.family
            g = groups.setdefault(f"{kind} | {r['op']} | {what}",
                                  {"kind": kind, "op": r["op"], "count": 0, "cases": [], "example": None})
            g["count"] += 1
            g["cases"].append(i)
            if g["example"] is None:
                fname = keep / f"case{i}.tsk"
                fname.write_bytes(case.raw)
                g["example"] = {"case": i, **case.info(), "file": str(fname),
                                "replay": f"python benchmarks/fuzz_tsk.py --seed {args.seed} --case {i} "
                                          f"--mem-mb {args.mem_mb}",
                                "type": r.get("type"), "msg": r.get("msg"), "tb": r.get("tb"),
                                "peak_mb": r.get("peak_mb"), "budget_mb": round(verdict["budget_mb"])}

    def slot(k: int) -> None:
        w = Worker(args.mem_mb, warm, log)
        with lock:
            workers.append(w)
        while True:
            try:
                i = tasks.get_nowait()
            except queue.Empty:
                break
            with gen_lock:
                case = make_case(seeds, args.seed, i)
            path = work / f"case{i}.tsk"
            path.write_bytes(case.raw)
            res = w.run(str(path), str(i), args.timeout_s)
            path.unlink()
            with lock:
                record(i, case, res)
        w.kill()

    threads = [threading.Thread(target=slot, args=(k,), daemon=True) for k in range(args.workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shutil.rmtree(work, ignore_errors=True)
    for g in groups.values():
        g["cases"] = g["cases"][:20]
    peaks.sort(reverse=True)
    kinds = Counter()
    for g in groups.values():
        kinds[g["kind"]] += g["count"]
    return {
        "n": args.n, "seed": args.seed, "workers": args.workers, "mem_mb": args.mem_mb,
        "timeout_s": args.timeout_s, "seconds": round(time.time() - t_start, 1), "seed_build_s": round(t_seeds, 1),
        "seeds": {s.name: {"bytes": len(s.raw), "declared_bytes": s.declared} for s in seeds},
        "worker_baseline": [w.info for w in workers], "worker_restarts": sum(w.restarts for w in workers),
        "loads": dict(counts), "loads_by_family": {k: dict(v) for k, v in sorted(fam_counts.items())},
        "load_vs_dense": dict(agree), "seconds_by_family": {k: round(v, 1) for k, v in fam_seconds.items()}, "findings": dict(kinds),
        "groups": sorted(groups.values(), key=lambda g: (g["kind"], -g["count"])),
        "top_peaks_mb": [{"peak_mb": p, "case": i, "op": op, "mutation": d} for p, i, op, d in peaks[:8]],
        "findings_dir": str(keep),
    }


def print_report(rep: dict) -> None:
    print(f"fuzz_tsk: {rep['n']} cases x {len(OPS)} loads, seed {rep['seed']}, {rep['workers']} workers, "
          f"cap +{rep['mem_mb']} MB per load, timeout {rep['timeout_s']} s; {rep['seconds']} s "
          f"(seeds {rep['seed_build_s']} s), worker restarts {rep['worker_restarts']}")
    for w in rep["worker_baseline"][:1]:
        print(f"  worker baseline after warm-up: {w['vm_mb']} MB address space, {w['rss_mb']} MB RSS")
    print("  seeds: " + ", ".join(f"{k} ({v['bytes']} B)" for k, v in rep["seeds"].items()))
    print("  loads: " + ", ".join(f"{k}={v}" for k, v in sorted(rep["loads"].items())))
    print("  by family:")
    for fam, c in rep["loads_by_family"].items():
        print(f"    {fam:10s} " + ", ".join(f"{k}={v}" for k, v in sorted(c.items()))
              + f"  ({rep['seconds_by_family'].get(fam, 0)} s)")
    print(f"  load vs load(dense=True) on a fixed input, both loaded: {rep['load_vs_dense']}")
    print("  largest per-load peak RSS: " + "; ".join(f"{p['peak_mb']} MB (case {p['case']} {p['op']})"
                                                      for p in rep["top_peaks_mb"][:5]))
    print(f"  findings: {rep['findings'] or 'none'}  (files: {rep['findings_dir']})")
    for g in rep["groups"]:
        ex = g["example"]
        print(f"\n  [{g['kind']}] x{g['count']} on {g['op']}: {ex.get('type') or ''} {ex.get('msg') or ''}"[:400])
        print(f"      e.g. case {ex['case']} ({ex['seed']}, {ex['family']}): {ex['mutation']}"[:400])
        print(f"      replay: {ex['replay']}")
        if ex.get("tb"):
            print("      " + ex["tb"].strip().splitlines()[-1][:300])
    bad = sum(rep["findings"].values())
    loads = rep["loads"]
    print(f"\nSUMMARY: {rep['n']} cases, {sum(loads.values())} loads: {loads.get('tsk', 0)} clean TskFormatError, "
          f"{loads.get('ok', 0)} loaded, {loads.get('other', 0)} other exceptions, {loads.get('crash', 0)} crashes, "
          f"{loads.get('hang', 0)} hangs, over-memory {rep['findings'].get('memory', 0)}, "
          f"bombs loaded {rep['findings'].get('bomb_loaded', 0)}, load/dense disagree "
          f"{rep['findings'].get('disagree', 0)}, silent changes {rep['findings'].get('changed', 0)}, "
          f"unnamed-tensor errors {rep['findings'].get('unnamed', 0)} -> {bad} findings in "
          f"{len(rep['groups'])} groups")


def replay(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="fuzz_tsk_case_"))
    seeds = build_seeds(work / "seeds")
    from torchshrink.format import read_tsk

    case = make_case(seeds, args.seed, args.case)
    path = Path(args.keep_dir or work) / f"case{args.case}.tsk"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(case.raw)
    runner = Runner(0)
    for s in seeds:
        s.digest = runner.digest(read_tsk(s.path).state_dict())
    for op in OPS:  # warm-up outside the cap
        runner.run(op, str(case.seed.path), "warm")
    gc.collect()
    gc.freeze()
    runner.mem_mb = args.mem_mb
    print(json.dumps({"case": args.case, **case.info(), "file": str(path)}, indent=1))
    res = [runner.run(op, str(path), "case") for op in OPS]
    for r in res:
        print(f"--- {r['op']}: {r['status']} {r.get('type') or ''} ({r['seconds']} s, peak {r['peak_mb']} MB)")
        if r.get("msg"):
            print("    " + r["msg"])
        if r.get("tb"):
            print(r["tb"])
        if "agree" in r:
            print(f"    load and load(dense=True) outputs agree: {r['agree']}")
    for kind, r in classify(case, res, case.seed.digest)["findings"]:
        print(f"FINDING {kind} on {r['op']}: {r.get('msg')}")
    if not args.keep_dir:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="number of mutated files (each is loaded 4 ways)")
    p.add_argument("--mem-mb", type=int, default=1024, help="address space a load may add (RLIMIT_AS), MB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--timeout-s", type=float, default=30.0, help="per load")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--case", type=int, default=None, help="regenerate and replay one case in-process")
    p.add_argument("--keep-dir", default=None, help="where to write the findings' files (default: a temp dir)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("warm", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.mem_mb, args.warm)
        return 0
    if args.case is not None:
        replay(args)
        return 0
    try:
        rep = drive(args)
    except Exception as exc:  # noqa: BLE001 - a measuring tool: report, exit 0
        rep = {"error": f"{type(exc).__name__}: {exc}", "tb": traceback.format_exc()}
        print(json.dumps(rep) if args.json else f"fuzz_tsk failed to run: {rep['error']}\n{rep['tb']}")
        print("SUMMARY: fuzz run failed before completing")
        return 0
    if args.json:
        print(json.dumps(rep, default=str))
    else:
        print_report(rep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
