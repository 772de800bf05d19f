"""The error every codec raises, and the small checks that raise it.

:class:`TskFormatError` is defined in :mod:`torchshrink.errors`; the helpers below validate codec arguments and the ``meta`` dicts read back from a file
*before* anything is allocated, so a malformed or hostile file costs no memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..core.params import Interval, check
from ..errors import TskFormatError

#: Integer dtypes a codec may be asked to restore on decode (numpy names).
INT_DTYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")
#: Float dtypes the dense and sparse codecs store (always little-endian on disk).
FLOAT_DTYPES = ("float32", "float16")
#: Largest element count a codec accepts (2**40): keeps every size computation exact.
MAX_ELEMENTS = 1 << 40



def check_int(value: Any, name: str, low: int, high: int) -> int:
    """Return ``value`` as an int if it is an integer in ``[low, high]``, else raise."""
    return check(value, name, None, Interval(int, low, high), error=TskFormatError)


def as_buffer(data: Any) -> np.ndarray:
    """View a bytes-like payload as a read-only uint8 array (no copy)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            raise TskFormatError(f"Encoded data must be bytes or a 1-D uint8 array. Got {data.dtype} {data.shape}.")
        return np.ascontiguousarray(data)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError, BufferError) as exc:
        raise TskFormatError(f"Encoded data must be bytes-like. Got {type(data).__name__}.") from exc


def check_meta(meta: Any, codec: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    """Check that ``meta`` is a mapping for ``codec`` holding at least ``keys``."""
    if not isinstance(meta, Mapping):
        raise TskFormatError(f"Codec meta must be a dict. Got {type(meta).__name__}.")
    if meta.get("codec") != codec:
        raise TskFormatError(f"Expected meta for codec '{codec}'. Got codec {meta.get('codec')!r}.")
    missing = [key for key in keys if key not in meta]
    if missing:
        raise TskFormatError(f"Meta of codec '{codec}' lacks the key(s) {missing}; the file is incomplete.")
    return meta


def check_shape(shape: Any) -> tuple[tuple[int, ...], int]:
    """Validate a stored shape (a list of non-negative ints); return it and its size."""
    if not isinstance(shape, (list, tuple)) or len(shape) > 32:
        raise TskFormatError(f"Meta 'shape' must be a list of at most 32 ints. Got {shape!r}.")
    dims = tuple(check_int(dim, "shape", 0, MAX_ELEMENTS) for dim in shape)
    size = 1
    for dim in dims:
        size *= dim
    if size > MAX_ELEMENTS:
        raise TskFormatError(f"Meta 'shape' {list(dims)} holds more than 2**40 elements.")
    return dims, size


def check_dtype(name: Any, allowed: tuple[str, ...]) -> np.dtype:
    """Return the numpy dtype for a stored dtype name from ``allowed``."""
    if name not in allowed:
        raise TskFormatError(f"Meta 'dtype' must be one of {list(allowed)}. Got {name!r}.")
    return np.dtype(name)


def check_length(data: np.ndarray, expected: int, what: str) -> None:
    """Raise unless the payload has exactly ``expected`` bytes."""
    if data.size != expected:
        raise TskFormatError(
            f"{what} payload must be exactly {expected} bytes. Got {data.size}; it is truncated or corrupted."
        )
