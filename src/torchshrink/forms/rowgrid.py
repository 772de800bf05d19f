"""``rowgrid``: a uniform grid per row (scale and offset per output row) and integer codes.

Packed kind ``"rowgrid"``::

    {"form": "rowgrid", "shape": [R, C], "bits": b, "scale": float16[R], "offset": float16[R],
     "indices": uint[R, C]}
    W[r, c] = float32(offset[r]) + float32(scale[r]) * indices[r, c]      # in float32

The grid GPTQ quantizes onto (Frantar et al. 2023, "GPTQ", §3: per-row asymmetric
min-max grid); the codes of a response-aware quantizer sit mostly near the middle of
the grid, so the ``indices`` stream (``b``-bit codes) is Huffman coded whenever that is
smaller (entropy-coded scalar quantization). ``scale`` and ``offset`` are stored as
float16 (2 + 2 bytes per row), so a writer must round them to float16 before it picks
codes. No kernel: loading decodes it to a plain layer (a lookup table for an embedding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..format.errors import TskFormatError, check_shape
from ..format.streams import INT_CODECS, Encoded, Options, float_stream, int_choice, int_stream
from .base import Form, StreamReader, codes, get

MAX_BITS = 8


def grid_weight(scale: np.ndarray, offset: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """``offset[r] + scale[r] * indices[r, c]`` in float32: the decode every writer must match."""
    s = np.asarray(scale).astype(np.float32)[:, None]
    o = np.asarray(offset).astype(np.float32)[:, None]
    return o + s * np.asarray(indices).astype(np.float32)


def _bits(packed: Mapping[str, Any]) -> int:
    bits = get(packed, "bits", "rowgrid")
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 1 <= int(bits) <= MAX_BITS:
        raise TskFormatError(f"The 'rowgrid' bits must be an int in [1, {MAX_BITS}]. Got {bits!r}.")
    return int(bits)


def _row_values(value: Any, what: str, rows: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.float16 or arr.shape != (rows,):
        raise TskFormatError(f"{what} must be a float16 array of shape [{rows}]. Got {arr.dtype} {list(arr.shape)}.")
    return arr


class RowGrid(Form):
    name = "rowgrid"
    packs = "rowgrid"
    selected_by = ("bitpack",)
    weight_role = "indices"

    def roles(self, params: Mapping[str, Any], name: str) -> dict[str, tuple[str, ...]]:
        return {"scale": ("dense",), "offset": ("dense",), "indices": INT_CODECS}

    def plan(self, value: dict, opts: Options) -> tuple[int, Any] | None:
        bits = _bits(value)
        indices = np.asarray(value["indices"]).reshape(-1)
        hist = np.bincount(indices.astype(np.int64), minlength=1 << bits) if opts.huffman is not False else None
        size, huff = int_choice(indices.size, bits, hist, opts.huffman)
        rows = int(value["shape"][0])
        return 4 * rows + size, huff

    def encode(self, value: dict, plan: Any, opts: Options) -> Encoded:
        bits = _bits(value)
        label = f"rowgrid({bits}b)" + ("+huffman" if plan else "")
        return Encoded("rowgrid", label, {"bits": bits}, [
            float_stream("scale", np.asarray(value["scale"], dtype=np.float16)),
            float_stream("offset", np.asarray(value["offset"], dtype=np.float16)),
            int_stream("indices", value["indices"], bits, plan),
        ])

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> dict:
        shape = rec["shape"]
        if not isinstance(shape, list) or len(shape) != 2:
            raise TskFormatError(f"A 'rowgrid' tensor must be 2-D. Got shape {shape!r}.")
        params = rec.get("params") or {}
        return {"form": "rowgrid", "shape": shape, "bits": params.get("bits"),
                "scale": read("scale", [shape[0]]).astype(np.float16),
                "offset": read("offset", [shape[0]]).astype(np.float16),
                "indices": read("indices", shape)}

    def unpack(self, packed: Mapping[str, Any]) -> np.ndarray:
        shape, _ = check_shape(get(packed, "shape", "rowgrid"))
        if len(shape) != 2:
            raise TskFormatError(f"A 'rowgrid' tensor must be 2-D. Got shape {list(shape)}.")
        bits = _bits(packed)
        scale = _row_values(get(packed, "scale", "rowgrid"), "The 'rowgrid' scale", shape[0])
        offset = _row_values(get(packed, "offset", "rowgrid"), "The 'rowgrid' offset", shape[0])
        indices = codes(get(packed, "indices", "rowgrid"), "The 'rowgrid' indices", tuple(shape), 1 << bits)
        return grid_weight(scale, offset, indices)
