"""Reading a ``.tsk`` file: validated tensor records and their lazy, exact decode.

:func:`read_tsk` checks the container (see :mod:`.container`) and every tensor record
before anything is decoded: known form, exactly the streams that form needs, every
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

from .. import forms
from .codecs import RAW_DTYPES, decode
from .container import crc32_hex, read_container
from .errors import TskFormatError, check_shape

#: Largest tensor (elements) a file may declare; keeps a hostile record from asking for
#: more memory than any real layer needs.
MAX_TENSOR_ELEMENTS = 1 << 32
#: Default cap on the bytes of all decoded tensors of one file (``read_tsk(max_bytes=...)``).
DEFAULT_MAX_BYTES = 4 << 30
#: A file may decode to at most ``EXPANSION_SLACK + MAX_EXPANSION × its own bytes``: Deep
#: Compression files are 35-50× smaller than what they decode to, a 1-bit code 32×, 8-bit
#: residual codes of whole rows 128×; an all-padding relative-index stream can claim
#: 65,536× (a decompression bomb). Checked before anything is decoded;
#: ``read_tsk(max_expansion=...)`` raises it for a trusted file.
MAX_EXPANSION = 256
EXPANSION_SLACK = 64 << 20
#: A stream holds at most ``2 × elements + STREAM_SLACK`` entries of its tensor (a relative-
#: index stream has at most one padding entry per stored one; codebooks are small): checked
#: before any stream is decoded, so a few bytes of Huffman code cannot decode to gigabytes.
STREAM_SLACK = 1 << 20
_HEX8 = re.compile(r"[0-9a-f]{8}")


def _check_record(rec: Any, blobs: Mapping[str, memoryview], used: set[str]) -> dict[str, Any]:
    if not isinstance(rec, dict) or not isinstance(rec.get("name"), str):
        raise TskFormatError("A .tsk tensor record must be an object with a string 'name'.")
    name = rec["name"]
    for key, kind in (("shape", list), ("dtype", str), ("form", str), ("codec", str), ("params", dict),
                      ("streams", dict)):
        if not isinstance(rec.get(key), kind):
            raise TskFormatError(f"Tensor {name!r}: the record's {key!r} is missing or not a {kind.__name__}.")
    try:
        _, numel = check_shape(rec["shape"])
    except TskFormatError as exc:
        raise TskFormatError(f"Tensor {name!r}: the record's shape is malformed: {exc}") from None
    if numel > MAX_TENSOR_ELEMENTS:
        raise TskFormatError(f"Tensor {name!r} declares {numel} elements, more than the {MAX_TENSOR_ELEMENTS} allowed.")
    if rec["dtype"] not in RAW_DTYPES:
        raise TskFormatError(f"Tensor {name!r} has the unsupported dtype {rec['dtype']!r}.")
    form = forms.FORMS.get(rec["form"])
    if form is None:
        raise TskFormatError(f"Tensor {name!r} has the unknown form {rec['form']!r} (known: {', '.join(forms.FORMS)}); "
                             "upgrade torchshrink?")
    if rec["dtype"] not in form.dtypes:
        raise TskFormatError(f"Tensor {name!r}: form {rec['form']!r} stores {list(form.dtypes)}, not {rec['dtype']!r}.")
    roles = form.roles(rec["params"], name)
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
    #: module name -> its state-dict ``_version`` where that is not 1; ``None`` in files without the field
    versions: dict[str, int] | None = None

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
            _, entries = check_shape(claimed)
        except TskFormatError as exc:
            raise TskFormatError(f"Tensor {name!r} (stream {role!r}): {exc}") from None
        limit = 2 * self.numel(name) + STREAM_SLACK
        if entries > limit:
            raise TskFormatError(f"Tensor {name!r}: stream {role!r} declares {entries} entries, more than a tensor of "
                                 f"{self.numel(name)} elements can need ({limit}); the file is corrupted.")
        try:
            arr = decode(data, meta)
        except TskFormatError as exc:
            raise TskFormatError(f"Tensor {name!r} (stream {role!r}): {exc}") from None
        except (ValueError, TypeError, IndexError, OverflowError) as exc:  # a meta no decoder foresaw
            raise TskFormatError(f"Tensor {name!r} (stream {role!r}) is malformed: {exc}") from None
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise TskFormatError(f"Tensor {name!r} (stream {role!r}) holds NaN or infinite values; "
                                 "the file is corrupted or the model diverged.")
        return arr

    def numel(self, name: str) -> int:
        """Elements the tensor's record declares."""
        return int(np.prod(self.record(name)["shape"], dtype=np.int64))

    def largest(self) -> str:
        """The name of the tensor that declares the most elements."""
        return max(self.records, key=self.numel) if self.records else "(none)"

    def decoded_bytes(self) -> int:
        """Bytes of every tensor once decoded, from the declared shapes and dtypes."""
        return sum(self.numel(n) * np.dtype(RAW_DTYPES[r["dtype"]][0]).itemsize for n, r in self.records.items())

    def form(self, name: str) -> forms.Form:
        """The registered form a tensor is stored in."""
        return forms.FORMS[self.record(name)["form"]]

    def _decoded(self, name: str) -> Any:
        rec = self.record(name)

        def read(role: str, shape: Any = None, ndim: int | None = None) -> np.ndarray:
            return self._stream(name, role, shape, ndim)

        try:
            return self.form(name).decode(read, rec)
        except TskFormatError as exc:
            msg = str(exc)
            raise TskFormatError(msg if repr(name) in msg else f"Tensor {name!r}: {msg}") from None

    def packed(self, name: str) -> dict[str, Any] | None:
        """The packed value (see :mod:`torchshrink.forms`) of a tensor stored in a packed form, else ``None``."""
        return self._decoded(name) if self.form(name).packs is not None else None

    def array(self, name: str) -> np.ndarray:
        """The decoded tensor as a numpy array (bfloat16 as its uint16 bits)."""
        form, value = self.form(name), self._decoded(name)
        if form.packs is None:
            return value
        try:
            return form.unpack(value)
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


def read_tsk(path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
             max_expansion: float = MAX_EXPANSION) -> TskFile:
    """Open a ``.tsk`` file: validate the container and records; decode nothing yet.

    What decoding every tensor may allocate (declared shapes × dtypes) is checked here,
    before anything is decoded, against ``max_bytes`` and against the file's own size
    (at most ``64 MB + max_expansion ×`` the file's bytes, see :data:`MAX_EXPANSION`).
    """
    doc, blobs, file_bytes, header_bytes = read_container(path)
    arch = doc.get("architecture")
    tensors = doc.get("tensors")
    if not isinstance(arch, dict) or not isinstance(tensors, list):
        raise TskFormatError("The .tsk metadata lacks its 'architecture' object or 'tensors' list.")
    spec, surgery = arch.get("zoo_spec"), arch.get("surgery")
    if not (spec is None or isinstance(spec, dict)) or not (surgery is None or isinstance(surgery, list)):
        raise TskFormatError("The .tsk architecture must hold a zoo_spec object or null, and a surgery list or null.")
    versions = arch.get("versions")
    if versions is not None and not (isinstance(versions, dict) and all(
            isinstance(k, str) and type(v) is int for k, v in versions.items())):
        raise TskFormatError("The .tsk architecture's 'versions' must map module names to integers.")
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
    f = TskFile(Path(path), file_bytes, header_bytes, doc["format"], spec, surgery, records, blobs, versions)
    declared = f.decoded_bytes()
    if declared > max_bytes:
        raise TskFormatError(f"{path} declares {declared:,} bytes of tensors, more than the {max_bytes:,} allowed "
                             f"(the largest is {f.largest()!r}); pass max_bytes= to read larger files.")
    if declared > EXPANSION_SLACK + max_expansion * file_bytes:
        raise TskFormatError(f"{path} declares {declared:,} bytes of tensors from {file_bytes:,} bytes of file, more than "
                             f"{max_expansion:g}× expansion allows (the largest is {f.largest()!r}); a decompression "
                             "bomb or a corrupted shape (pass max_expansion= if the file is trusted).")
    return f

