"""Relative-index sparse storage (Deep Compression, Han et al. 2016 §3, Fig. 2; EIE).

The weight is flattened in row-major (C) order. Each stored *entry* has a gap and a
value: the gap is the number of zero positions skipped since the previous entry (the
EIE "zero run"; the first entry counts from the start), held in ``index_bits`` bits, so
an entry's position is ``previous position + gap + 1`` with the previous position of the
first entry taken as ``-1``. When a run of zeros is longer than ``2**index_bits - 1``, a
*padding zero* entry (gap ``2**index_bits - 1``, value zero) is inserted, as the papers
do; padding entries are also appended after the last nonzero until fewer than
``2**index_bits`` positions remain, so the stream always covers the whole array and a
decoder never allocates more than ``(count + 1) * 2**index_bits`` elements.

"Zero" is the all-zero bit pattern for float weights (``-0.0`` is stored as a value, so
round trips are bit-exact) and ``zero_code`` for codebook indices; in the latter case
the codebook entry ``zero_code`` should be 0.0 (pruned weights).

Payload layout (``count`` entries, each part starting on a byte boundary)::

    gaps:   pack_bits(gaps, index_bits)            ceil(count * index_bits / 8) bytes
    values: float32/float16 little-endian            count * itemsize bytes, or
            pack_bits(codes, value_bits)            ceil(count * value_bits / 8) bytes

Meta: ``{"codec": "relative_sparse", "shape", "dtype", "index_bits", "count",
"value_bits", "zero_code"}`` (the last two are ``None`` for float values).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bitpack import MAX_BITS, pack_bits, packed_size, unpack_bits
from .errors import FLOAT_DTYPES, INT_DTYPES, MAX_ELEMENTS, TskFormatError, as_buffer, check_dtype
from .errors import check_int, check_length, check_meta, check_shape

_UINT_OF_SIZE = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _is_stored(flat: np.ndarray, zero_code: int | None) -> np.ndarray:
    """Mask of positions that need an entry: nonzero bit pattern, or code != zero_code."""
    if flat.dtype.kind == "f":
        return flat.view(_UINT_OF_SIZE[flat.dtype.itemsize]) != 0
    return flat != zero_code


def _check_values(x: Any, value_bits: int | None, zero_code: int | None) -> tuple[np.ndarray, int | None]:
    """Validate the array to store and the (value_bits, zero_code) pair for its kind."""
    arr = np.asarray(x)
    if arr.dtype.name in FLOAT_DTYPES:
        if value_bits is not None or zero_code is not None:
            raise TskFormatError("Float weights are stored as floats: pass value_bits=None and zero_code=None.")
        return arr, None
    if arr.dtype.name not in INT_DTYPES:
        raise TskFormatError(
            f"Sparse values must be float32/float16 weights or integer codes. Got dtype {arr.dtype}."
        )
    if value_bits is None:
        raise TskFormatError("Integer codes need 'value_bits' (the codebook index width, 1..16).")
    value_bits = check_int(value_bits, "value_bits", 1, MAX_BITS)
    zero_code = check_int(0 if zero_code is None else zero_code, "zero_code", 0, (1 << value_bits) - 1)
    if arr.size and (arr.min() < 0 or arr.max() >= (1 << value_bits)):
        raise TskFormatError(f"Codes must lie in [0, {(1 << value_bits) - 1}] for value_bits={value_bits}.")
    return arr, zero_code


def to_relative_index(
    x: Any, index_bits: int = 5, zero_code: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``x`` (flattened, C order) into the gap stream and the value stream.

    Returns ``(gaps, values)``: ``gaps`` is ``uint16`` in ``[0, 2**index_bits)``, ``values``
    has ``x``'s dtype and holds zero (or ``zero_code``) at padding entries. Both streams
    are what Deep Compression Huffman-codes. For integer codes pass ``zero_code``.
    """
    index_bits = check_int(index_bits, "index_bits", 1, MAX_BITS)
    flat = np.ascontiguousarray(np.asarray(x)).ravel()
    if flat.dtype.kind == "f" and zero_code is not None:
        raise TskFormatError("Float weights use zero (bit pattern 0) as the background: pass zero_code=None.")
    if flat.dtype.kind != "f" and zero_code is None:
        zero_code = 0
    period = 1 << index_bits
    pos = np.flatnonzero(_is_stored(flat, zero_code))
    runs = np.diff(pos, prepend=-1) - 1  # zeros before each stored value
    tail = flat.size - 1 - (int(pos[-1]) if pos.size else -1)  # zeros after the last one
    pads = runs // period
    tail_pads = tail // period
    real = np.cumsum(pads + 1) - 1  # entry index of each stored value
    count = (int(real[-1]) + 1 if real.size else 0) + tail_pads
    gaps = np.full(count, period - 1, dtype=np.uint16)
    gaps[real] = runs % period
    values = np.full(count, 0 if zero_code is None else zero_code, dtype=flat.dtype)
    values[real] = flat[pos]
    return gaps, values


def from_relative_index(
    gaps: Any, values: Any, shape: Any, index_bits: int = 5, zero_code: int | None = None
) -> np.ndarray:
    """Inverse of :func:`to_relative_index`: the dense array of ``shape``.

    Raises :class:`TskFormatError` if the streams disagree in length, a position falls
    outside the array, or the streams do not cover the array (see the module docstring).
    """
    index_bits = check_int(index_bits, "index_bits", 1, MAX_BITS)
    shape, size = check_shape([shape] if isinstance(shape, (int, np.integer)) else list(shape))
    gaps, values = np.asarray(gaps), np.asarray(values)
    if gaps.ndim != 1 or values.shape != gaps.shape:
        raise TskFormatError(f"Gap and value streams must be 1-D of equal length. Got {gaps.shape}, {values.shape}.")
    if gaps.size and (gaps.dtype.kind not in "ui" or gaps.min() < 0 or gaps.max() >= (1 << index_bits)):
        raise TskFormatError(f"Gaps must be integers in [0, {(1 << index_bits) - 1}] for index_bits={index_bits}.")
    period = 1 << index_bits
    if size > (gaps.size + 1) * period:
        raise TskFormatError(
            f"The stream of {gaps.size} entries cannot cover {size} elements with index_bits={index_bits}."
        )
    positions = np.cumsum(gaps.astype(np.int64) + 1) - 1
    last = int(positions[-1]) if positions.size else -1
    if last >= size:
        raise TskFormatError(f"A sparse entry points at position {last}, past the end of {size} elements.")
    if size - 1 - last >= period:
        raise TskFormatError(f"The sparse stream stops at position {last} but the array has {size} elements.")
    background = 0 if zero_code is None else zero_code
    out = np.full(size, background, dtype=values.dtype)
    out[positions] = values
    return out.reshape(shape)


def encode_relative_sparse(
    x: Any, index_bits: int = 5, value_bits: int | None = None, zero_code: int | None = None
) -> tuple[bytes, dict[str, Any]]:
    """Encode ``x`` as relative-index sparse bytes plus meta (layout: module docstring).

    ``x`` is a float32/float16 weight (values stored as floats) or an integer array of
    codebook indices (pass ``value_bits``; ``zero_code`` defaults to 0). Deep Compression
    uses ``index_bits=5`` for FC and ``8`` for conv layers; EIE uses 4.
    """
    arr, zero_code = _check_values(x, value_bits, zero_code)
    gaps, values = to_relative_index(arr, index_bits, zero_code)
    if zero_code is None:
        value_data = values.astype(values.dtype.newbyteorder("<")).tobytes()
    else:
        value_data = pack_bits(values, value_bits)
    meta = {
        "codec": "relative_sparse",
        "shape": list(arr.shape),
        "dtype": arr.dtype.name,
        "index_bits": int(index_bits),
        "count": int(gaps.size),
        "value_bits": None if zero_code is None else int(value_bits),
        "zero_code": zero_code,
    }
    return pack_bits(gaps, index_bits) + value_data, meta


def decode_relative_sparse(data: Any, meta: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_relative_sparse`: the dense array, bit for bit."""
    meta = check_meta(meta, "relative_sparse", ("shape", "dtype", "index_bits", "count", "value_bits", "zero_code"))
    _, size = check_shape(meta["shape"])
    dtype = check_dtype(meta["dtype"], FLOAT_DTYPES + INT_DTYPES)
    index_bits = check_int(meta["index_bits"], "index_bits", 1, MAX_BITS)
    count = check_int(meta["count"], "count", 0, MAX_ELEMENTS)
    if count > size:
        raise TskFormatError(f"Meta 'count' {count} exceeds the {size} elements of the array.")
    if dtype.kind == "f":
        if meta["value_bits"] is not None or meta["zero_code"] is not None:
            raise TskFormatError("Float sparse meta must have value_bits and zero_code set to null.")
        value_bits, zero_code, value_bytes = None, None, count * dtype.itemsize
    else:
        value_bits = check_int(meta["value_bits"], "value_bits", 1, MAX_BITS)
        zero_code = check_int(meta["zero_code"], "zero_code", 0, min((1 << value_bits) - 1, np.iinfo(dtype).max))
        value_bytes = packed_size(count, value_bits)
    buf = as_buffer(data)
    gap_bytes = packed_size(count, index_bits)
    check_length(buf, gap_bytes + value_bytes, f"A relative-sparse stream of {count} entries")
    gaps = unpack_bits(buf[:gap_bytes], index_bits, count)
    if value_bits is None:
        values = buf[gap_bytes:].view(dtype.newbyteorder("<")).astype(dtype)
    else:
        values = unpack_bits(buf[gap_bytes:], value_bits, count)
        if values.size and int(values.max()) > np.iinfo(dtype).max:
            raise TskFormatError(f"A decoded code exceeds the range of the stored dtype {dtype.name}.")
        values = values.astype(dtype)
    return from_relative_index(gaps, values, meta["shape"], index_bits, zero_code)
