"""``ternary``: a weight of three levels {+Wp, 0, -Wn} (Trained Ternary Quantization, Zhu et al. 2017).

Packed kind ``"ternary"``::

    {"form": "ternary", "shape": [...], "codes": uint8[shape], "scales": float32[2]}
    W = where(codes == 1, Wp, where(codes == 2, -Wn, 0))        # scales = [Wp, Wn]

Storage. The flattened codes (0 = zero, 1 = positive, 2 = negative) are grouped by five
into base-3 symbols ``s = c0 + 3 c1 + 9 c2 + 27 c3 + 81 c4 < 243`` (the last group padded
with zero codes), one byte for five weights: 1.6 bits per weight instead of 2. TTQ leaves
many zeros, so the symbols' histogram is far from flat; the ``codes`` stream is
canonical-Huffman coded where that is smaller (the exact sizes are computed from the
histogram), which brings the zero/sign information close to its entropy. The scales
Wp, Wn live in the record's params (``{"group": 5, "wp": Wp, "wn": Wn, "inline": 1}``; a
float32 value written as JSON reads back bit for bit), not in a stream of their own,
which saves a stream record, its checksum and its blob span. Files with a ``scales``
stream (no ``inline``) still load. The runtime module runs the codes without multiplying by a
weight (:mod:`torchshrink.runtime.ternary`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from ..format.errors import TskFormatError, check_shape
from ..format.streams import FLOAT_CODECS, INT_CODECS, Encoded, Options, int_choice, int_stream
from .base import Form, StreamReader, codes, floats, get
from .binary import inline_floats

#: Codes per base-3 symbol (3^5 = 243 <= 256: one byte).
GROUP = 5
_POWERS = 3 ** np.arange(GROUP, dtype=np.int64)


def to_symbols(trits: np.ndarray) -> np.ndarray:
    """Flat codes in {0, 1, 2} -> uint8 base-3 symbols of :data:`GROUP` codes (zero padded)."""
    flat = np.asarray(trits).reshape(-1)
    padded = np.zeros(-(-flat.size // GROUP) * GROUP, np.int64)
    padded[: flat.size] = flat
    return (padded.reshape(-1, GROUP) @ _POWERS).astype(np.uint8)


def from_symbols(symbols: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`to_symbols`: ``count`` uint8 codes; refuses symbols >= 243 and nonzero padding."""
    s = np.asarray(symbols).reshape(-1).astype(np.int64)
    if s.size != -(-count // GROUP):
        raise TskFormatError(f"A ternary code stream of {count} weights needs {-(-count // GROUP)} symbols. Got {s.size}.")
    if s.size and int(s.max()) >= 3**GROUP:
        raise TskFormatError(f"ternary symbols must lie in [0, {3**GROUP - 1}]; the data is corrupted.")
    trits = ((s[:, None] // _POWERS[None, :]) % 3).astype(np.uint8).reshape(-1)
    if np.any(trits[count:]):
        raise TskFormatError("nonzero padding codes after the last ternary weight; the data is corrupted.")
    return trits[:count]


class Ternary(Form):
    name = "ternary"
    packs = "ternary"
    selected_by = ("bitpack",)
    ROLES = {"scales": FLOAT_CODECS, "codes": INT_CODECS}
    weight_role = "codes"

    def roles(self, params: Mapping[str, Any], name: str) -> dict[str, tuple[str, ...]]:
        return {"codes": self.ROLES["codes"]} if params.get("inline") == 1 else self.ROLES

    def plan(self, value: dict, opts: Options) -> tuple[int, Any] | None:
        symbols = to_symbols(value["codes"])
        hist = None if opts.huffman is False else np.bincount(symbols, minlength=3**GROUP)
        size, huff = int_choice(symbols.size, 8, hist, opts.huffman)
        return 8 + size, (symbols, huff)

    def encode(self, value: dict, plan: Any, opts: Options) -> Encoded:
        if plan is None:
            plan = self.plan(value, opts)[1]
        symbols, huff = plan
        scales = np.ascontiguousarray(value["scales"], dtype=np.float32)
        label = "ternary(1.6b)" + ("+huffman" if huff else "")
        return Encoded("ternary", label, {"group": GROUP, "wp": float(scales[0]), "wn": float(scales[1]), "inline": 1},
                       [int_stream("codes", symbols, 8, huff)])

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> dict:
        shape, count = check_shape(rec["shape"])
        if rec.get("params", {}).get("group") != GROUP:
            raise TskFormatError(f"a ternary record must have params.group = {GROUP}; the file is corrupted.")
        trits = from_symbols(read("codes", [-(-count // GROUP)]), count)
        params = rec["params"]
        scales = inline_floats(params, ("wp", "wn"), "ternary") if params.get("inline") == 1 else read("scales", [2])
        return {"form": "ternary", "shape": list(shape), "codes": trits.reshape(shape), "scales": scales}

    def unpack(self, packed: Mapping[str, Any]) -> np.ndarray:
        shape, _ = check_shape(get(packed, "shape", "ternary"))
        scales = floats(get(packed, "scales", "ternary"), "The 'ternary' scales", 1)
        if scales.size != 2:
            raise TskFormatError(f"The 'ternary' scales must hold [Wp, Wn]. Got {scales.size} values.")
        c = codes(get(packed, "codes", "ternary"), "The 'ternary' codes", shape, 3)
        table = np.array([0.0, scales[0], -scales[1]], np.float32)
        return table[c]

    def runtime(self, layer: nn.Module, packed: Mapping[str, Any]) -> nn.Module | None:
        from ..runtime.ternary import ternary_layer

        return ternary_layer(layer, packed)
