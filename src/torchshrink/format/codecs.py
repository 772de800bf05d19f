"""Dense float codecs and the dispatch from a ``meta`` dict to its decoder.

Every codec maps a numpy array to ``(bytes, meta)`` and back bit for bit; ``meta`` is a
small JSON-able dict whose ``"codec"`` key names the codec. Decoders validate ``meta``
and the payload length before allocating and raise :class:`TskFormatError` on anything
malformed. The codecs:

========================  ==========================================  ===============
codec                     encode                                      module
========================  ==========================================  ===============
``dense``                 :func:`encode_dense` (fp32 / fp16, LE)      here
``bitpack``               :func:`encode_bitpack` (b-bit codes)        ``bitpack``
``relative_sparse``       :func:`encode_relative_sparse`              ``sparse``
``huffman``               :func:`encode_huffman`                      ``huffman``
========================  ==========================================  ===============

Dense layout: the array in C order as little-endian IEEE float32 or float16, nothing
else; meta ``{"codec": "dense", "dtype": "float32" | "float16", "shape": [...]}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

import torch

from .bitpack import decode_bitpack
from .errors import FLOAT_DTYPES, TskFormatError, as_buffer, check_dtype, check_length, check_meta, check_shape
from .huffman import decode_huffman
from .sparse import decode_relative_sparse

#: Stored dtype name -> (numpy dtype of the bytes, torch dtype): what the ``raw`` codec keeps.
RAW_DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "float32": ("<f4", torch.float32), "float16": ("<f2", torch.float16), "float64": ("<f8", torch.float64),
    "bfloat16": ("<u2", torch.bfloat16), "int8": ("i1", torch.int8), "int16": ("<i2", torch.int16),
    "int32": ("<i4", torch.int32), "int64": ("<i8", torch.int64), "uint8": ("u1", torch.uint8),
    "bool": ("?", torch.bool),
}


def encode_dense(x: Any, dtype: str | None = None) -> tuple[bytes, dict[str, Any]]:
    """Store ``x`` as little-endian ``dtype`` (``"float32"`` or ``"float16"``).

    ``dtype=None`` keeps ``x``'s dtype, which must then be float32 or float16; an explicit
    ``dtype`` casts (fp32 -> fp16 rounds to nearest even, the only lossy step).
    """
    arr = np.asarray(x)
    name = arr.dtype.name if dtype is None else dtype
    if name not in FLOAT_DTYPES:
        raise TskFormatError(
            f"Dense storage supports {list(FLOAT_DTYPES)}. Got {name!r}; pass dtype='float32' to cast."
        )
    data = np.ascontiguousarray(arr, dtype=np.dtype(name).newbyteorder("<")).tobytes()
    return data, {"codec": "dense", "dtype": name, "shape": list(arr.shape)}


def decode_dense(data: Any, meta: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_dense`: a writable native-order array."""
    meta = check_meta(meta, "dense", ("dtype", "shape"))
    dtype = check_dtype(meta["dtype"], FLOAT_DTYPES)
    shape, size = check_shape(meta["shape"])
    buf = as_buffer(data)
    check_length(buf, size * dtype.itemsize, f"A dense {dtype.name} {list(shape)}")
    return buf.view(dtype.newbyteorder("<")).astype(dtype).reshape(shape)


def decode_raw(data: Any, meta: Mapping[str, Any]) -> np.ndarray:
    """Any :data:`RAW_DTYPES` array from its little-endian bytes (a bfloat16 as its uint16 bits)."""
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


_DECODERS = {
    "dense": decode_dense,
    "bitpack": decode_bitpack,
    "relative_sparse": decode_relative_sparse,
    "huffman": decode_huffman,
    "raw": decode_raw,
}


def decode(data: Any, meta: dict[str, Any]) -> np.ndarray:
    """Decode any codec's payload, choosing the decoder by ``meta["codec"]``."""
    codec = meta.get("codec") if isinstance(meta, Mapping) else None
    if codec not in _DECODERS:
        raise TskFormatError(f"Unknown codec {codec!r}; expected one of {sorted(_DECODERS)}.")
    return _DECODERS[codec](data, meta)
