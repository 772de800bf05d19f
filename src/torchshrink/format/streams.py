"""Streams: one tensor's stored parts, and the exact-size helpers forms use to pick codecs.

A *stream* is one blob of a stored tensor with a role in its form (``codebook``,
``gaps``, ``codes``, ...) and the meta of the codec that wrote it. An *int stream* is
bit-packed (``bitpack`` codec, fixed width) or canonical Huffman coded (``huffman``,
Deep Compression §4), whichever is smaller unless the caller forces one; a *float
stream* is ``dense`` (fp32 / fp16). Every size here is computed exactly from histograms
(Huffman code lengths from :func:`~torchshrink.format.huffman.code_lengths_from_counts`)
before anything is encoded, so a form can weigh all its variants cheaply and encode only
the winner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bitpack import encode_bitpack, packed_size
from .codecs import encode_dense
from .huffman import code_lengths_from_counts, encode_huffman

#: Codecs an int stream and a float stream may be written with.
INT_CODECS = ("bitpack", "huffman")
FLOAT_CODECS = ("dense",)
#: Gap widths tried for relative-index sparse streams when none is given (Deep
#: Compression uses 5 for FC and 8 for conv layers; both are in the range).
INDEX_BITS = tuple(range(1, 13))
_HUFFMAN_TABLE_BITS = 5


@dataclass
class Stream:
    """One blob of a tensor: its role in the form, bytes, codec meta, and (not stored) the
    fixed width in bits of one entry before any entropy coding, for reports."""

    role: str
    data: bytes
    meta: dict[str, Any]
    width: int | None = None


@dataclass
class Encoded:
    """The stored form of one tensor: form name, a readable label, params and streams."""

    form: str
    label: str
    params: dict[str, Any] = field(default_factory=dict)
    streams: list[Stream] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(len(s.data) for s in self.streams)


@dataclass(frozen=True)
class Options:
    """Per-tensor encoding choices: forced codec, gap width, Huffman on int streams."""

    codec: str = "auto"
    index_bits: int | None = None
    huffman: bool | None = None


def huffman_nbytes(counts: np.ndarray) -> int:
    """Bytes :func:`encode_huffman` produces for a stream with symbol ``counts``."""
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return 0
    counts = counts[: nz[-1] + 1]
    bits = int(np.dot(counts, code_lengths_from_counts(counts)))
    return packed_size(counts.size, _HUFFMAN_TABLE_BITS) + packed_size(bits, 1)


def int_choice(count: int, bits: int, counts: np.ndarray | None, huffman: bool | None) -> tuple[int, bool]:
    """(bytes, use_huffman) of the cheaper allowed coding of an int stream."""
    fixed = packed_size(count, bits)
    if huffman is False or counts is None:
        return fixed, False
    coded = huffman_nbytes(counts)
    if huffman is True or coded < fixed:
        return coded, True
    return fixed, False


def runs(stored: np.ndarray) -> tuple[np.ndarray, int]:
    """Zeros before each stored entry, and zeros after the last one."""
    pos = np.flatnonzero(stored)
    gaps = np.diff(pos, prepend=-1) - 1
    tail = stored.size - 1 - (int(pos[-1]) if pos.size else -1)
    return gaps, tail


def gap_hist(zero_runs: np.ndarray, tail: int, b: int) -> tuple[int, np.ndarray]:
    """(entries, gap histogram) of the relative-index stream with ``b``-bit gaps."""
    period = 1 << b
    pads = int((zero_runs >> b).sum()) + (tail >> b)
    counts = np.bincount(zero_runs & (period - 1), minlength=period)
    counts[period - 1] += pads
    return zero_runs.size + pads, counts


def index_widths(opts: Options) -> tuple[int, ...]:
    """The gap widths to try: the forced one, or :data:`INDEX_BITS`."""
    return (opts.index_bits,) if opts.index_bits else INDEX_BITS


def int_stream(role: str, arr: np.ndarray, bits: int, use_huffman: bool) -> Stream:
    arr = np.ascontiguousarray(arr, dtype=np.uint8 if bits <= 8 else np.uint16)
    data, meta = encode_huffman(arr) if use_huffman else encode_bitpack(arr, bits)
    return Stream(role, data, meta, bits)


def float_stream(role: str, arr: np.ndarray, dtype: str | None = None) -> Stream:
    data, meta = encode_dense(np.asarray(arr, order="C"), dtype)
    return Stream(role, data, meta, 32 if meta["dtype"] == "float32" else 16)


def code_bits(k: int) -> int:
    """Bits needed for indices into a codebook of ``k`` entries (at least 1)."""
    return max(1, (int(k) - 1).bit_length())
