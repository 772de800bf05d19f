"""Reading a ``.tsk`` file: validated tensor records and their lazy, exact decode.

:func:`read_tsk` checks the container (see :mod:`.container`) and every tensor record
before anything is decoded: known layout, exactly the streams that layout needs, every
blob referenced once with the recorded size. A tensor is decoded only when asked for,
after its blobs' CRC-32 match; each stream's claimed shape is checked against the
record before its decoder runs, and the decoders themselves check claimed sizes against
the payload before allocating (:mod:`.codecs`), so a bad file costs no memory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .codecs import decode
from .container import crc32_hex, read_container
from .errors import TskFormatError, as_buffer, check_int, check_length, check_shape
from .forms import unpack
from .sparse import from_relative_index

#: Largest tensor (elements) a file may declare; keeps a hostile record from asking for
#: more memory than any real layer needs.
MAX_TENSOR_ELEMENTS = 1 << 32
#: Stored dtype name -> (numpy dtype of the bytes, torch dtype).
RAW_DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "float32": ("<f4", torch.float32), "float16": ("<f2", torch.float16), "float64": ("<f8", torch.float64),
    "bfloat16": ("<u2", torch.bfloat16), "int8": ("i1", torch.int8), "int16": ("<i2", torch.int16),
    "int32": ("<i4", torch.int32), "int64": ("<i8", torch.int64), "uint8": ("u1", torch.uint8),
    "bool": ("?", torch.bool),
}
_INT = ("bitpack", "huffman")
_FLOAT = ("dense",)
_LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "dense": {"data": ("dense", "raw")},
    "sparse": {"gaps": _INT, "values": _FLOAT},
    "shared": {"codebook": _FLOAT, "indices": _INT},
    "shared_sparse": {"codebook": _FLOAT, "gaps": _INT, "codes": _INT},
    "pq": {"codebooks": _FLOAT, "codes": _INT},
}
_MAX_STAGES = 64
_HEX8 = re.compile(r"[0-9a-f]{8}")


def _roles(form: str, params: Mapping[str, Any], name: str) -> dict[str, tuple[str, ...]]:
    if form in _LAYOUTS:
        return _LAYOUTS[form]
    if form == "rq":
        n = check_int(params.get("stages"), f"stages of {name}", 1, _MAX_STAGES)
        return {f"stages.{t}.{part}": (_FLOAT if part == "codebooks" else _INT)
                for t in range(n) for part in ("codebooks", "codes")}
    raise TskFormatError(f"Tensor {name!r} has the unknown layout (codec) {form!r}; upgrade torchshrink?")


def _check_record(rec: Any, blobs: Mapping[str, memoryview], used: set[str]) -> dict[str, Any]:
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        raise TskFormatError("A .tsk tensor record must be an object with a string 'name'.")
    name = rec["name"]
    for key, kind in (("shape", list), ("dtype", str), ("form", str), ("codec", str), ("params", dict),
                      ("streams", dict)):
        if not isinstance(rec.get(key), kind):
            raise TskFormatError(f"Tensor {name!r}: the record's {key!r} is missing or not a {kind.__name__}.")
    _, numel = check_shape(rec["shape"])
    if numel > MAX_TENSOR_ELEMENTS:
        raise TskFormatError(f"Tensor {name!r} declares {numel} elements, more than the {MAX_TENSOR_ELEMENTS} allowed.")
    if rec["dtype"] not in RAW_DTYPES:
        raise TskFormatError(f"Tensor {name!r} has the unsupported dtype {rec['dtype']!r}.")
    if rec["form"] != "dense" and rec["dtype"] not in ("float32", "float16"):
        raise TskFormatError(f"Tensor {name!r}: layout {rec['form']!r} needs a float dtype, got {rec['dtype']!r}.")
    roles = _roles(rec["form"], rec["params"], name)
    if set(rec["streams"]) != set(roles):
        raise TskFormatError(
            f"Tensor {name!r} ({rec['form']}) has streams {sorted(rec['streams'])}; expected {sorted(roles)}."
        )
    for role, s in rec["streams"].items():
        if not isinstance(s, dict) or not isinstance(s.get("meta"), dict) or not isinstance(s.get("blob"), str):
            raise TskFormatError(f"Tensor {name!r}: stream {role!r} needs a 'blob' name and a 'meta' object.")
        if s["meta"].get("codec") not in roles[role]:
            raise TskFormatError(
                f"Tensor {name!r}: unknown codec {s['meta'].get('codec')!r} for stream {role!r}; "
                f"expected one of {list(roles[role])}."
            )
        blob = s["blob"]
        if blob not in blobs:
            raise TskFormatError(f"Tensor {name!r}: missing blob {blob!r}; the file is incomplete.")
        if blob in used:
            raise TskFormatError(f"Tensor {name!r}: blob {blob!r} is used twice; the file is corrupted.")
        used.add(blob)
        crc = s.get("crc32")
        if s.get("nbytes") != len(blobs[blob]) or not isinstance(crc, str) or not _HEX8.fullmatch(crc):
            raise TskFormatError(f"Tensor {name!r}: blob {blob!r} has {len(blobs[blob])} bytes, not the recorded size.")
    return rec


def _decode_raw(data: memoryview, meta: Mapping[str, Any]) -> np.ndarray:
    if meta.get("dtype") not in RAW_DTYPES:
        raise TskFormatError(f"Raw meta 'dtype' must be one of {list(RAW_DTYPES)}. Got {meta.get('dtype')!r}.")
    shape, size = check_shape(meta.get("shape"))
    dtype = np.dtype(RAW_DTYPES[meta["dtype"]][0])
    buf = as_buffer(data)
    check_length(buf, size * dtype.itemsize, f"A raw {meta['dtype']} {list(shape)}")
    arr = buf.view(dtype).astype(dtype.newbyteorder("="))
    if dtype.kind == "b" and arr.size and buf.max() > 1:
        raise TskFormatError("A raw bool tensor holds bytes other than 0 and 1; the data is corrupted.")
    return arr.reshape(shape)


@dataclass
class TskFile:
    """A read ``.tsk`` file: metadata, per-tensor sizes, and tensors decoded on request."""

    path: Path
    file_bytes: int
    header_bytes: int
    version: str
    zoo_spec: dict[str, Any] | None
    surgery: list[Any] | None
    records: dict[str, dict[str, Any]]
    _blobs: dict[str, memoryview] = field(repr=False)

    @property
    def names(self) -> list[str]:
        """Tensor names (plain state-dict keys), in file order."""
        return list(self.records)

    def record(self, name: str) -> dict[str, Any]:
        if name not in self.records:
            raise TskFormatError(f"{self.path} holds no tensor {name!r}; it holds {', '.join(self.records) or 'none'}.")
        return self.records[name]

    def nbytes(self, name: str) -> int:
        """Bytes of the tensor's blobs (header excluded)."""
        return sum(s["nbytes"] for s in self.record(name)["streams"].values())

    def codec(self, name: str) -> str:
        return self.record(name)["codec"]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.record(name)["shape"])

    def _stream(self, name: str, role: str, shape: Any = None, ndim: int | None = None) -> np.ndarray:
        """Decode one stream after its CRC and claimed shape are checked."""
        s = self.records[name]["streams"][role]
        data = self._blobs[s["blob"]]
        if crc32_hex(data) != s["crc32"]:
            raise TskFormatError(f"Checksum mismatch in tensor {name!r} (stream {role!r}); the file is corrupted.")
        meta = s["meta"]
        claimed = meta.get("shape")
        if (shape is not None and claimed != list(shape)) or (ndim is not None and not (
                isinstance(claimed, list) and len(claimed) == ndim)):
            want = list(shape) if shape is not None else f"{ndim}-D"
            raise TskFormatError(
                f"Shape mismatch in tensor {name!r}: stream {role!r} has shape {claimed!r}, expected {want}."
            )
        try:
            return _decode_raw(data, meta) if meta["codec"] == "raw" else decode(data, meta)
        except TskFormatError as exc:
            raise TskFormatError(f"Tensor {name!r} (stream {role!r}): {exc}") from None
        except (ValueError, TypeError, IndexError, OverflowError) as exc:  # a meta no decoder foresaw
            raise TskFormatError(f"Tensor {name!r} (stream {role!r}) is malformed: {exc}") from None

    def packed(self, name: str) -> dict[str, Any] | None:
        """The packed form (``packed.md``) of a shared / pq / rq tensor, else ``None``."""
        rec = self.record(name)
        form, shape = rec["form"], rec["shape"]
        if form in ("shared", "shared_sparse"):
            codebook = self._stream(name, "codebook", ndim=1)
            if form == "shared":
                indices = self._stream(name, "indices", shape)
            else:
                b = check_int(rec["params"].get("index_bits"), "index_bits", 1, 16)
                gaps = self._stream(name, "gaps", ndim=1)
                codes = self._stream(name, "codes", list(gaps.shape))
                try:
                    indices = from_relative_index(gaps, codes, shape, b, zero_code=0)
                except TskFormatError as exc:
                    raise TskFormatError(f"Tensor {name!r}: {exc}") from None
            return {"form": "shared", "shape": shape, "codebook": codebook, "indices": indices}
        if form in ("pq", "rq"):
            prefixes = [""] if form == "pq" else [f"stages.{t}." for t in range(rec["params"]["stages"])]
            stages = []
            for p in prefixes:
                cb = self._stream(name, p + "codebooks", ndim=3)
                codes = self._stream(name, p + "codes", [shape[0] if shape else 0, cb.shape[0]])
                stages.append({"codebooks": cb, "codes": codes})
            params = rec["params"]
            out = {"form": form, "shape": shape, "subvector": params.get("subvector"), "pad": params.get("pad")}
            return {**out, **stages[0]} if form == "pq" else {**out, "stages": stages}
        return None

    def array(self, name: str) -> np.ndarray:
        """The decoded tensor as a numpy array (bfloat16 as its uint16 bits)."""
        rec = self.record(name)
        form, shape = rec["form"], rec["shape"]
        if form == "dense":
            arr = self._stream(name, "data", shape)
            meta = rec["streams"]["data"]["meta"]
            if meta["codec"] == "raw" and meta["dtype"] != rec["dtype"]:
                raise TskFormatError(f"Tensor {name!r}: raw dtype differs from the record's {rec['dtype']!r}.")
            return arr
        if form == "sparse":
            b = check_int(rec["params"].get("index_bits"), "index_bits", 1, 16)
            gaps = self._stream(name, "gaps", ndim=1)
            values = self._stream(name, "values", list(gaps.shape))
            try:
                return from_relative_index(gaps, values, shape, b)
            except TskFormatError as exc:
                raise TskFormatError(f"Tensor {name!r}: {exc}") from None
        packed = self.packed(name)
        try:
            return unpack(packed)
        except TskFormatError as exc:
            raise TskFormatError(f"Tensor {name!r}: {exc}") from None

    def tensor(self, name: str) -> torch.Tensor:
        """The decoded tensor with the dtype it had when saved (fp16 storage is cast back)."""
        rec = self.record(name)
        arr = np.require(self.array(name), requirements=("C", "W"))
        if rec["dtype"] == "bfloat16" and arr.dtype == np.uint16:
            return torch.from_numpy(arr).view(torch.bfloat16)
        t = torch.from_numpy(arr)
        return t.to(RAW_DTYPES[rec["dtype"]][1])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor, decoded (checks every checksum)."""
        return {name: self.tensor(name) for name in self.records}


def read_tsk(path: str | Path) -> TskFile:
    """Open a ``.tsk`` file: validate the container and records; decode nothing yet."""
    doc, blobs, file_bytes, header_bytes = read_container(path)
    arch = doc.get("architecture")
    tensors = doc.get("tensors")
    if not isinstance(arch, dict) or not isinstance(tensors, list):
        raise TskFormatError("The .tsk metadata lacks its 'architecture' object or 'tensors' list.")
    spec, surgery = arch.get("zoo_spec"), arch.get("surgery")
    if not (spec is None or isinstance(spec, dict)) or not (surgery is None or isinstance(surgery, list)):
        raise TskFormatError("The .tsk architecture must hold a zoo_spec object or null, and a surgery list or null.")
    used: set[str] = set()
    records: dict[str, dict[str, Any]] = {}
    for rec in tensors:
        rec = _check_record(rec, blobs, used)
        if rec["name"] in records:
            raise TskFormatError(f"Tensor {rec['name']!r} appears twice in the .tsk metadata.")
        records[rec["name"]] = rec
    extra = sorted(set(blobs) - used)
    if extra:
        raise TskFormatError(f"The .tsk file holds blob(s) no tensor uses: {extra[:3]}; it is corrupted.")
    return TskFile(Path(path), file_bytes, header_bytes, doc["format"], spec, surgery, records, blobs)

