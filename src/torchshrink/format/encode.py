"""Choosing and applying the smallest exact encoding of one tensor for a ``.tsk`` file.

Every candidate's size is computed exactly from histograms (bit-packed widths, Huffman
code lengths from :func:`~torchshrink.format.huffman.code_lengths_from_counts`) before
anything is encoded, so trying all of them is cheap; only the winner is encoded.

File layouts (``form``) and their streams:

==================  =====================================================================
``dense``           ``data``: dense fp32 / fp16 (:func:`encode_dense`) or ``raw`` (own dtype)
``sparse``          ``gaps`` (int stream) + ``values`` (dense floats): relative-index sparse
                    (Deep Compression §3: gap = zeros skipped, a padding zero on overflow)
``shared``          ``codebook`` (fp32) + ``indices`` (int stream, the weight's shape)
``shared_sparse``   ``codebook`` + ``gaps`` + ``codes``: relative-index sparse codebook
                    indices with index 0 as the background (pruned weights)
``pq``              ``codebooks`` (fp32 ``[S, K, d]``) + ``codes`` (int stream ``[out, S]``)
``rq``              ``stages.<t>.codebooks`` + ``stages.<t>.codes`` for each stage
==================  =====================================================================

An *int stream* is bit-packed (``bitpack`` codec, ``ceil(log2 K)`` bits) or canonical
Huffman coded (``huffman`` codec, Deep Compression §4), whichever is smaller unless the
caller forces one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bitpack import encode_bitpack, packed_size
from .codecs import encode_dense
from .errors import TskFormatError
from .forms import code_bits, unpack
from .huffman import code_lengths_from_counts, encode_huffman
from .sparse import to_relative_index

#: Codec names a caller may force per tensor (``save(..., codecs={pattern: name})``).
CODECS = ("auto", "dense", "fp16", "sparse", "bitpack")
#: Gap widths tried for relative-index sparse storage when none is given (Deep
#: Compression uses 5 for FC and 8 for conv layers; both are in the range).
INDEX_BITS = tuple(range(1, 13))
_HUFFMAN_TABLE_BITS = 5


@dataclass
class Stream:
    """One blob of a tensor: its role in the layout, bytes and codec meta."""

    role: str
    data: bytes
    meta: dict[str, Any]


@dataclass
class Encoded:
    """The stored form of one tensor."""

    form: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    streams: list[Stream] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(len(s.data) for s in self.streams)


@dataclass(frozen=True)
class Options:
    """Per-tensor encoding choices: codec family, gap width, Huffman on int streams."""

    codec: str = "auto"
    index_bits: int | None = None
    huffman: bool | None = None


# --- exact sizes ------------------------------------------------------------------------


def huffman_nbytes(counts: np.ndarray) -> int:
    """Bytes :func:`encode_huffman` produces for a stream with symbol ``counts``."""
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return 0
    counts = counts[: nz[-1] + 1]
    bits = int(np.dot(counts, code_lengths_from_counts(counts)))
    return packed_size(counts.size, _HUFFMAN_TABLE_BITS) + packed_size(bits, 1)


def _int_choice(count: int, bits: int, counts: np.ndarray | None, huffman: bool | None) -> tuple[int, bool]:
    """(bytes, use_huffman) of the cheaper allowed coding of an int stream."""
    fixed = packed_size(count, bits)
    if huffman is False or counts is None:
        return fixed, False
    coded = huffman_nbytes(counts)
    if huffman is True or coded < fixed:
        return coded, True
    return fixed, False


def _runs(stored: np.ndarray) -> tuple[np.ndarray, int]:
    """Zeros before each stored entry, and zeros after the last one."""
    pos = np.flatnonzero(stored)
    runs = np.diff(pos, prepend=-1) - 1
    tail = stored.size - 1 - (int(pos[-1]) if pos.size else -1)
    return runs, tail


def _gap_hist(runs: np.ndarray, tail: int, b: int) -> tuple[int, np.ndarray]:
    """(entries, gap histogram) of the relative-index stream with ``b``-bit gaps."""
    period = 1 << b
    pads = int((runs >> b).sum()) + (tail >> b)
    counts = np.bincount(runs & (period - 1), minlength=period)
    counts[period - 1] += pads
    return runs.size + pads, counts


# --- encoders ---------------------------------------------------------------------------


def _int_stream(role: str, arr: np.ndarray, bits: int, use_huffman: bool) -> Stream:
    arr = np.ascontiguousarray(arr, dtype=np.uint8 if bits <= 8 else np.uint16)
    data, meta = encode_huffman(arr) if use_huffman else encode_bitpack(arr, bits)
    return Stream(role, data, meta)


def _float_stream(role: str, arr: np.ndarray, dtype: str | None = None) -> Stream:
    data, meta = encode_dense(np.asarray(arr, order="C"), dtype)
    return Stream(role, data, meta)


def encode_raw(arr: np.ndarray, dtype_name: str) -> Stream:
    """Any dtype as its little-endian bytes; meta ``{"codec": "raw", "dtype", "shape"}``."""
    arr = np.asarray(arr, order="C")
    data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return Stream("data", data, {"codec": "raw", "dtype": dtype_name, "shape": list(arr.shape)})


def _sparse_plan(x: np.ndarray, opts: Options, value_size: int) -> tuple[int, int, bool] | None:
    """Cheapest (bytes, index_bits, huffman_gaps) for relative-index sparse floats."""
    stored = x.reshape(-1).view(np.uint32 if x.dtype.itemsize == 4 else np.uint16) != 0
    nnz = int(stored.sum())
    if opts.codec == "auto" and value_size * nnz + nnz // 8 >= value_size * x.size:
        return None  # the values alone cost as much as the dense tensor
    runs, tail = _runs(stored)
    best = None
    for b in [opts.index_bits] if opts.index_bits else INDEX_BITS:
        count, counts = _gap_hist(runs, tail, b)
        gap_bytes, huff = _int_choice(count, b, counts, opts.huffman)
        total = gap_bytes + value_size * count
        if best is None or total < best[0]:
            best = (total, b, huff)
    return best


def encode_plain(x: np.ndarray, dtype_name: str, opts: Options) -> Encoded:
    """Smallest exact (or forced) plain encoding of a tensor's values.

    Dense storage keeps every bit. Sparse storage treats -0.0 as zero and restores it as
    +0.0 -- a pruned negative weight (``w * 0``) is -0.0, and storing the sign of each
    would cost a full value per pruned weight; ``-0.0 == 0.0`` and no layer output changes.
    """
    if dtype_name not in ("float32", "float16"):
        return Encoded("dense", f"raw:{dtype_name}", streams=[encode_raw(x, dtype_name)])
    if opts.codec == "fp16":
        return Encoded("dense", "dense:fp16", streams=[_float_stream("data", x, "float16")])
    dense_bytes = x.size * x.dtype.itemsize
    dense = x
    x = x + x.dtype.type(0)  # -0.0 -> +0.0 (pruned negative weights), every other value unchanged
    plan = _sparse_plan(x, opts, x.dtype.itemsize) if opts.codec in ("auto", "sparse") else None
    if plan is None or (opts.codec == "auto" and plan[0] >= dense_bytes):
        label = "dense" if dtype_name == "float32" else f"dense:{dtype_name}"
        return Encoded("dense", label, streams=[_float_stream("data", dense)])
    _, b, huff = plan
    gaps, values = to_relative_index(x, b)
    return Encoded(
        "sparse",
        f"sparse({b}b)" + ("+huffman" if huff else ""),
        {"index_bits": b},
        [_int_stream("gaps", gaps, b, huff), _float_stream("values", values)],
    )


def _shared_candidates(packed: Mapping[str, Any], opts: Options) -> list[tuple[int, Any]]:
    """(bytes, builder) for the dense-index and sparse-index layouts of a shared weight."""
    codebook = np.asarray(packed["codebook"])
    indices = np.asarray(packed["indices"]).reshape(-1).astype(np.int64)
    k, bits = codebook.size, code_bits(codebook.size)
    out = []
    if opts.codec in ("auto", "bitpack"):
        hist = np.bincount(indices, minlength=k) if opts.huffman is not False else None
        size, huff = _int_choice(indices.size, bits, hist, opts.huffman)
        out.append((4 * k + size, ("shared", bits, huff)))
    if opts.codec in ("auto", "sparse"):
        stored = indices != 0
        runs, tail = _runs(stored)
        code_hist = np.bincount(indices[stored], minlength=k)
        for b in [opts.index_bits] if opts.index_bits else INDEX_BITS:
            count, gap_hist = _gap_hist(runs, tail, b)
            gap_bytes, huff_g = _int_choice(count, b, gap_hist, opts.huffman)
            ch = code_hist.copy()
            ch[0] += count - runs.size
            code_bytes, huff_c = _int_choice(count, bits, ch, opts.huffman)
            out.append((4 * k + gap_bytes + code_bytes, ("shared_sparse", bits, b, huff_g, huff_c)))
    return out


def _build_shared(packed: Mapping[str, Any], plan: tuple) -> Encoded:
    codebook = np.ascontiguousarray(packed["codebook"], dtype=np.float32)
    indices = np.asarray(packed["indices"])
    cb = _float_stream("codebook", codebook)
    if plan[0] == "shared":
        _, bits, huff = plan
        label = f"shared({bits}b)" + ("+huffman" if huff else "")
        return Encoded("shared", label, {"bits": bits}, [cb, _int_stream("indices", indices, bits, huff)])
    _, bits, b, huff_g, huff_c = plan
    gaps, codes = to_relative_index(indices.astype(np.uint16), b, zero_code=0)
    which = [n for n, h in (("gaps", huff_g), ("codes", huff_c)) if h]
    label = f"shared({bits}b)/sparse({b}b)" + (f"+huffman({','.join(which)})" if which else "")
    streams = [cb, _int_stream("gaps", gaps, b, huff_g), _int_stream("codes", codes, bits, huff_c)]
    return Encoded("shared_sparse", label, {"bits": bits, "index_bits": b}, streams)


def _encode_quantized(packed: Mapping[str, Any], opts: Options) -> Encoded:
    form = packed["form"]
    stages = [packed] if form == "pq" else list(packed["stages"])
    streams: list[Stream] = []
    bits_list, used = [], False
    for t, stage in enumerate(stages):
        prefix = "" if form == "pq" else f"stages.{t}."
        codebooks = np.ascontiguousarray(stage["codebooks"], dtype=np.float32)
        codes = np.asarray(stage["codes"])
        bits = code_bits(codebooks.shape[1])
        hist = np.bincount(codes.reshape(-1).astype(np.int64), minlength=codebooks.shape[1])
        _, huff = _int_choice(codes.size, bits, None if opts.huffman is False else hist, opts.huffman)
        streams += [_float_stream(prefix + "codebooks", codebooks), _int_stream(prefix + "codes", codes, bits, huff)]
        bits_list.append(bits)
        used |= huff
    d, pad = int(packed["subvector"]), int(packed["pad"])
    params: dict[str, Any] = {"subvector": d, "pad": pad}
    if form == "rq":
        params["stages"] = len(stages)
    shape = "x".join(map(str, bits_list))
    return Encoded(form, f"{form}({shape}b,d={d})" + ("+huffman" if used else ""), params, streams)


def encode_packed(packed: Mapping[str, Any], effective: np.ndarray, opts: Options) -> Encoded:
    """Smallest exact (or forced) encoding of a weight whose transform has a packed form.

    ``effective`` is the weight the model computes; forced ``dense`` / ``fp16`` store it
    plainly, ``auto`` also weighs the plain encodings against the packed ones.
    """
    form = packed.get("form")
    if opts.codec in ("dense", "fp16") or (opts.codec == "sparse" and form != "shared"):
        return encode_plain(effective, "float32", opts)
    if form == "shared":
        options = _shared_candidates(packed, opts)
        size, plan = min(options, key=lambda c: c[0])
        best = _build_shared(packed, plan)
    else:
        best = _encode_quantized(packed, opts)
    if opts.codec == "auto":
        plain = encode_plain(effective, "float32", opts)
        if plain.nbytes < best.nbytes:
            return plain
    return best


def check_packed(packed: Any, effective: np.ndarray, name: str) -> dict[str, Any]:
    """Normalize a ``pack()`` result to numpy and check it decodes to ``effective``.

    Equality is bitwise except that +0.0 and -0.0 count as equal (they give the same
    layer outputs); anything else means the transform's forward and its ``pack`` disagree.
    """
    packed = _to_numpy(packed)
    if not isinstance(packed, dict):
        raise TskFormatError(f"pack() of {name!r} must return a dict. Got {type(packed).__name__}.")
    try:
        decoded = unpack(packed)
    except TskFormatError as exc:
        raise TskFormatError(f"pack() of {name!r} returned a malformed form: {exc}") from None
    ok = decoded.shape == effective.shape
    if ok:
        a, b = decoded.view(np.uint32), np.ascontiguousarray(effective, dtype=np.float32).view(np.uint32)
        ok = bool(np.all((a == b) | (((a | b) & 0x7FFFFFFF) == 0)))
    if not ok:
        raise TskFormatError(
            f"pack() of {name!r} does not reproduce the layer's effective weight bit for bit; fix the "
            f"transform, or store the plain weight with codecs={{{name!r}: 'dense'}}."
        )
    return packed


def _to_numpy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping):
        return [_to_numpy(v) for v in value]
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return value
