"""Canonical Huffman coding of non-negative integer streams (Deep Compression §4).

Code lengths come from the in-place minimum-redundancy algorithm of Moffat & Katajainen
(1995), limited to :data:`MAX_CODE_LEN` bits by halving the counts until the code fits;
codes are then assigned canonically (shorter codes first, then by symbol, as in DEFLATE,
RFC 1951 §3.2.2), so the code lengths alone define the code.

Payload layout (``A`` = alphabet size = largest symbol + 1)::

    lengths: pack_bits(code length of symbol 0..A-1, 5)   ceil(5 * A / 8) bytes (0 = absent)
    stream:  the codes, most significant bit first,        ceil(stream_bits / 8) bytes
             packed MSB-first into bytes, zero padded

A stream with a single distinct symbol codes it with one bit, so every symbol costs at
least one bit and a decoder never allocates more than ``8 * len(payload)`` symbols.
Meta: ``{"codec": "huffman", "shape", "dtype", "alphabet", "stream_bits"}``.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .bitpack import pack_bits, packed_size, unpack_bits
from .errors import INT_DTYPES, TskFormatError, as_buffer, check_dtype, check_int, check_length, check_meta
from .errors import check_shape

MAX_CODE_LEN = 24
MAX_ALPHABET = 1 << 24
_LEN_BITS = 5
_TABLE_BITS = 11
_CHUNK = 1 << 20


def _minimum_redundancy(weights: np.ndarray) -> None:
    """Moffat-Katajainen: turn ascending weights (n >= 2) into code lengths, in place."""
    n = weights.size
    a = weights
    a[0] += a[1]
    root, leaf = 0, 2
    for nxt in range(1, n - 1):  # phase 1: build the tree, parents stored as indices
        if leaf >= n or a[root] < a[leaf]:
            a[nxt] = a[root]
            a[root] = nxt
            root += 1
        else:
            a[nxt] = a[leaf]
            leaf += 1
        if leaf >= n or (root < nxt and a[root] < a[leaf]):
            a[nxt] += a[root]
            a[root] = nxt
            root += 1
        else:
            a[nxt] += a[leaf]
            leaf += 1
    a[n - 2] = 0  # phase 2: internal node depths
    for nxt in range(n - 3, -1, -1):
        a[nxt] = a[a[nxt]] + 1
    avbl, used, depth, root, nxt = 1, 0, 0, n - 2, n - 1  # phase 3: leaf depths
    while avbl > 0:
        while root >= 0 and a[root] == depth:
            used += 1
            root -= 1
        while avbl > used:
            a[nxt] = depth
            nxt -= 1
            avbl -= 1
        avbl, depth, used = 2 * used, depth + 1, 0


def _decode_stream(stream, count, table_bits, table_sym, table_len, max_len, first, cnt, offset, syms, out):
    """Decode ``count`` symbols: a 2**table_bits lookup, then a canonical walk per bit.

    Returns ``(status, consumed_bits)``; status 0 = ok, 1 = truncated, 2 = invalid code.
    """
    n_bytes = stream.size
    byte_pos = 0
    buf = 0
    nbits = 0
    mask_t = (1 << table_bits) - 1
    for i in range(count):
        while nbits <= 48 and byte_pos < n_bytes:
            buf = (buf << 8) | np.int64(stream[byte_pos])
            byte_pos += 1
            nbits += 8
        if nbits >= table_bits:
            peek = (buf >> (nbits - table_bits)) & mask_t
        else:
            peek = (buf << (table_bits - nbits)) & mask_t
        length = table_len[peek]
        if length > 0:
            if length > nbits:
                return 1, 0
            out[i] = table_sym[peek]
        else:
            length = table_bits
            found = False
            while length < max_len:
                length += 1
                if length > nbits:
                    return 1, 0
                d = ((buf >> (nbits - length)) & ((1 << length) - 1)) - first[length]
                if d >= 0 and d < cnt[length]:
                    out[i] = syms[offset[length] + d]
                    found = True
                    break
            if not found:
                return 2, 0
        nbits -= length
        buf &= (1 << nbits) - 1
    return 0, byte_pos * 8 - nbits


@functools.cache
def _kernels():
    """Compile the numba kernels on first use (keeps ``import torchshrink`` light)."""
    import numba

    return (
        numba.njit(cache=True, nogil=True)(_minimum_redundancy),
        numba.njit(cache=True, nogil=True)(_decode_stream),
    )


def _check_stream(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.name not in INT_DTYPES:
        raise TskFormatError(f"Huffman coding needs an integer dtype in {list(INT_DTYPES)}. Got {arr.dtype}.")
    if arr.size and (arr.min() < 0 or arr.max() >= MAX_ALPHABET):
        raise TskFormatError(f"Huffman symbols must lie in [0, {MAX_ALPHABET - 1}]. Got [{arr.min()}, {arr.max()}].")
    return arr


def code_lengths_from_counts(counts: Any, max_len: int = MAX_CODE_LEN) -> np.ndarray:
    """Huffman code length per symbol (0 where the count is 0), each at most ``max_len``."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.int64)
    present = np.flatnonzero(counts)
    if present.size == 1:
        lengths[present] = 1
    if present.size < 2:
        return lengths
    if present.size > (1 << max_len):
        raise TskFormatError(f"{present.size} distinct symbols do not fit in codes of at most {max_len} bits.")
    order = present[np.argsort(counts[present], kind="stable")]  # ascending count, ties by symbol
    weights = counts[order]
    minimum_redundancy = _kernels()[0]
    while True:
        work = weights.copy()
        minimum_redundancy(work)
        if work[0] <= max_len:  # the rarest symbol has the longest code
            break
        weights = (weights + 1) >> 1  # flatten the distribution; order is kept
    lengths[order] = work
    return lengths


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of each symbol from its length (RFC 1951 §3.2.2)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    bl_count = np.bincount(lengths, minlength=MAX_CODE_LEN + 1)
    bl_count[0] = 0
    first = np.zeros(bl_count.size, dtype=np.int64)
    for n in range(1, bl_count.size):
        first[n] = (first[n - 1] + bl_count[n - 1]) << 1
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    sorted_lengths = lengths[order]
    starts = np.cumsum(bl_count) - bl_count  # index of the first code of each length
    codes = np.zeros(lengths.size, dtype=np.int64)
    codes[order] = first[sorted_lengths] + np.arange(order.size) - starts[sorted_lengths]
    return codes


def _write_codes(codes: np.ndarray, lengths: np.ndarray, total_bits: int) -> bytes:
    """Concatenate variable-length codes MSB-first; vectorized over 64-bit words."""
    words = np.zeros((total_bits + 63) // 64 + 1, dtype=np.uint64)
    bit0 = 0
    for lo in range(0, codes.size, _CHUNK):
        code = codes[lo : lo + _CHUNK].astype(np.uint64)
        length = lengths[lo : lo + _CHUNK]
        start = bit0 + np.cumsum(length) - length
        bit0 = int(start[-1] + length[-1])
        word, shift = start >> 6, 64 - (start & 63) - length  # shift < 0: spills into word + 1
        fits = shift >= 0
        head = (code << np.where(fits, shift, 0).astype(np.uint64)) >> np.where(fits, 0, -shift).astype(np.uint64)
        groups = np.flatnonzero(np.diff(word, prepend=-1))
        words[word[groups]] |= np.bitwise_or.reduceat(head, groups)
        spill = ~fits
        words[word[spill] + 1] |= code[spill] << (64 + shift[spill]).astype(np.uint64)
    return words.astype(">u8").tobytes()[: packed_size(total_bits, 1)]


def encode_huffman(values: Any) -> tuple[bytes, dict[str, Any]]:
    """Canonical-Huffman-code an integer array of any shape (layout: module docstring)."""
    arr = _check_stream(values)
    flat = arr.ravel().astype(np.int64)
    alphabet = int(flat.max()) + 1 if flat.size else 0
    lengths = code_lengths_from_counts(np.bincount(flat, minlength=alphabet))
    codes = canonical_codes(lengths)
    stream_lengths = lengths[flat]
    total_bits = int(stream_lengths.sum())
    data = pack_bits(lengths, _LEN_BITS) + (_write_codes(codes[flat], stream_lengths, total_bits) if flat.size else b"")
    meta = {"codec": "huffman", "shape": list(arr.shape), "dtype": arr.dtype.name,
            "alphabet": alphabet, "stream_bits": total_bits}
    return data, meta


def _decode_tables(lengths: np.ndarray) -> tuple:
    """Lookup table for codes of <= table_bits bits plus canonical tables for the rest."""
    max_len = int(lengths.max())
    table_bits = min(max_len, _TABLE_BITS)
    codes = canonical_codes(lengths)
    bl_count = np.bincount(lengths, minlength=MAX_CODE_LEN + 2)[: MAX_CODE_LEN + 2]
    bl_count[0] = 0
    first = np.zeros(MAX_CODE_LEN + 2, dtype=np.int64)
    for n in range(1, MAX_CODE_LEN + 2):
        first[n] = (first[n - 1] + bl_count[n - 1]) << 1
    offset = (np.cumsum(bl_count) - bl_count).astype(np.int64)
    syms = np.lexsort((np.arange(lengths.size), lengths))
    syms = syms[lengths[syms] > 0].astype(np.int64)
    short = np.flatnonzero((lengths > 0) & (lengths <= table_bits))
    span = np.int64(1) << (table_bits - lengths[short])
    begin = np.repeat(codes[short] << (table_bits - lengths[short]), span)
    within = np.arange(begin.size) - np.repeat(np.cumsum(span) - span, span)
    table_sym = np.zeros(1 << table_bits, dtype=np.int64)
    table_len = np.zeros(1 << table_bits, dtype=np.int64)
    table_sym[begin + within] = np.repeat(short, span)
    table_len[begin + within] = np.repeat(lengths[short], span)
    return table_bits, table_sym, table_len, max_len, first, bl_count.astype(np.int64), offset, syms


def decode_huffman(data: Any, meta: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_huffman`: the integer array, bit for bit."""
    meta = check_meta(meta, "huffman", ("shape", "dtype", "alphabet", "stream_bits"))
    shape, count = check_shape(meta["shape"])
    dtype = check_dtype(meta["dtype"], INT_DTYPES)
    alphabet = check_int(meta["alphabet"], "alphabet", 0, MAX_ALPHABET)
    stream_bits = check_int(meta["stream_bits"], "stream_bits", 0, count * MAX_CODE_LEN)
    if count > stream_bits or (count == 0) != (alphabet == 0):
        raise TskFormatError(f"Huffman meta is inconsistent: {count} symbols, alphabet {alphabet}, {stream_bits} bits.")
    buf = as_buffer(data)
    table_bytes = packed_size(alphabet, _LEN_BITS)
    check_length(buf, table_bytes + packed_size(stream_bits, 1), f"A Huffman stream of {stream_bits} bits")
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    lengths = unpack_bits(buf[:table_bytes], _LEN_BITS, alphabet).astype(np.int64)
    present = lengths > 0
    if lengths.max() > MAX_CODE_LEN or not present.any():
        raise TskFormatError(f"Huffman code lengths must lie in [0, {MAX_CODE_LEN}] with at least one nonzero.")
    if int(np.sum(np.int64(1) << (MAX_CODE_LEN - lengths[present]))) > (1 << MAX_CODE_LEN):
        raise TskFormatError("The Huffman code lengths are over-subscribed (Kraft sum > 1); the table is corrupted.")
    if np.flatnonzero(present)[-1] > np.iinfo(dtype).max:
        raise TskFormatError(f"The Huffman alphabet does not fit the stored dtype {dtype.name}.")
    stream = np.ascontiguousarray(buf[table_bytes:])
    tail = stream_bits % 8
    if tail and stream[-1] & ((1 << (8 - tail)) - 1):
        raise TskFormatError("Nonzero padding bits after the Huffman stream; the payload is corrupted.")
    out = np.empty(count, dtype=np.int64)
    status, consumed = _kernels()[1](stream, count, *_decode_tables(lengths), out)
    if status == 1 or (status == 0 and consumed != stream_bits):
        raise TskFormatError(f"The Huffman stream does not hold {count} symbols in {stream_bits} bits; corrupted.")
    if status == 2:
        raise TskFormatError("The Huffman stream holds a bit pattern that is no code; it is corrupted.")
    return out.astype(dtype).reshape(shape)


def encoded_bits(values: Any) -> dict[str, float]:
    """Sizes in bits of an integer stream under fixed-width packing and Huffman coding.

    Keys: ``count``; ``fixed`` (``count * ceil(log2(max + 1))``, at least 1 bit each);
    ``huffman`` (the coded stream) and ``huffman_table`` (the 5-bit length table);
    ``entropy`` (the Shannon bound ``count * H``, zeroth order). Divide by the number of
    weights for "bits per weight before and after Huffman".
    """
    flat = _check_stream(values).ravel().astype(np.int64)
    if flat.size == 0:
        return {"count": 0, "fixed": 0, "huffman": 0, "huffman_table": 0, "entropy": 0.0}
    counts = np.bincount(flat)
    lengths = code_lengths_from_counts(counts)
    p = counts[counts > 0] / flat.size
    return {
        "count": int(flat.size),
        "fixed": int(flat.size * max(1, int(flat.max()).bit_length())),
        "huffman": int(np.dot(counts, lengths)),
        "huffman_table": _LEN_BITS * counts.size,
        "entropy": float(-flat.size * np.sum(p * np.log2(p))),
    }
