"""Bit packing of unsigned integer codes (codebook indices, ternary and binary codes).

Layout (LSB-first, no header): value ``i`` occupies stream bits ``[i*b, (i+1)*b)``, its
least significant bit first, and stream bit ``j`` is bit ``j % 8`` of byte ``j // 8``.
``count`` codes of ``b`` bits take exactly ``ceil(count * b / 8)`` bytes; the unused high
bits of the last byte are zero (the decoder checks this).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import INT_DTYPES, MAX_ELEMENTS, TskFormatError, as_buffer, check_dtype, check_int
from .errors import check_length, check_meta, check_shape

MAX_BITS = 16


def packed_size(count: int, bits: int) -> int:
    """Bytes taken by ``count`` codes of ``bits`` bits: ``ceil(count * bits / 8)``."""
    return (count * bits + 7) // 8


def _check_codes(values: Any, bits: int) -> np.ndarray:
    """Flatten ``values`` and check that they are integers in ``[0, 2**bits)``."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "uib":
        raise TskFormatError(f"Codes must be an integer array. Got dtype {arr.dtype}.")
    flat = arr.ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= (1 << bits)):
        raise TskFormatError(
            f"Codes must lie in [0, {(1 << bits) - 1}] for bits={bits}. "
            f"Got values in [{flat.min()}, {flat.max()}]; use more bits."
        )
    return flat


def pack_bits(values: Any, bits: int) -> bytes:
    """Pack unsigned integer codes into ``ceil(len * bits / 8)`` bytes, LSB-first.

    ``values`` may have any shape (it is flattened in C order); each must lie in
    ``[0, 2**bits)``. ``bits`` is an int in ``[1, 16]``.
    """
    bits = check_int(bits, "bits", 1, MAX_BITS)
    flat = _check_codes(values, bits)
    if bits == 8:
        return flat.astype(np.uint8).tobytes()
    if bits == 16:
        return flat.astype("<u2").tobytes()
    width = 8 if bits < 8 else 16
    as_bytes = flat.astype(np.uint8 if width == 8 else "<u2").view(np.uint8).reshape(flat.size, width // 8)
    expanded = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits]
    return np.packbits(expanded.ravel(), bitorder="little").tobytes()


def unpack_bits(data: Any, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` codes of ``bits`` bits from ``data``.

    Returns a 1-D ``uint8`` array when ``bits <= 8``, else ``uint16``. ``data`` must be
    exactly ``ceil(count * bits / 8)`` bytes with zero padding bits, else
    :class:`TskFormatError` is raised before anything is allocated.
    """
    bits = check_int(bits, "bits", 1, MAX_BITS)
    count = check_int(count, "count", 0, MAX_ELEMENTS)
    buf = as_buffer(data)
    check_length(buf, packed_size(count, bits), f"A {count} x {bits}-bit code")
    tail = (count * bits) % 8
    if tail and buf[-1] >> tail:
        raise TskFormatError("Nonzero padding bits after the last packed code; the payload is corrupted.")
    if bits == 8:
        return buf.copy()
    if bits == 16:
        return buf.view("<u2").astype(np.uint16)
    width = 8 if bits < 8 else 16
    stream = np.unpackbits(buf, count=count * bits, bitorder="little").reshape(count, bits)
    padded = np.zeros((count, width), dtype=np.uint8)
    padded[:, :bits] = stream
    packed = np.packbits(padded, axis=1, bitorder="little")
    return packed.ravel() if width == 8 else packed.view("<u2").ravel().astype(np.uint16)


def encode_bitpack(codes: Any, bits: int) -> tuple[bytes, dict[str, Any]]:
    """Codec form of :func:`pack_bits`: bytes plus ``{"codec", "bits", "shape", "dtype"}``."""
    arr = np.asarray(codes)
    if arr.dtype.name not in INT_DTYPES:
        raise TskFormatError(f"Codes must have an integer dtype in {list(INT_DTYPES)}. Got {arr.dtype}.")
    data = pack_bits(arr, bits)
    return data, {"codec": "bitpack", "bits": int(bits), "shape": list(arr.shape), "dtype": arr.dtype.name}


def decode_bitpack(data: Any, meta: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_bitpack`: the codes with their shape and dtype."""
    meta = check_meta(meta, "bitpack", ("bits", "shape", "dtype"))
    shape, size = check_shape(meta["shape"])
    dtype = check_dtype(meta["dtype"], INT_DTYPES)
    codes = unpack_bits(data, meta["bits"], size)
    if codes.size and int(codes.max()) > np.iinfo(dtype).max:
        raise TskFormatError(f"A decoded code exceeds the range of the stored dtype {dtype.name}.")
    return codes.astype(dtype).reshape(shape)
