"""``binary``: 1-bit weights with float scales (BinaryConnect, BWN, LAB).

Packed kind ``"binary"``::

    {"form": "binary", "shape": [out, ...], "positive": uint8[shape] (0/1), "alpha": float32[n]}
    W = where(positive, α, -α)        # n = out: α per output channel (BWN); n = 1: one per layer

Streams: ``positive``, one bit per weight (bit-packed; signs are near balanced, so
Huffman never pays), and, for α per channel, ``alpha``: 8-bit codes ``k`` with
``α = k · 2^alpha_exp`` (``alpha_exp`` in params) when the scales lie on such a grid, as
BWN's trained with ``alpha_bits: 8`` do (:mod:`~torchshrink.quantize.pow2`); else fp16
when every value is exactly a float16 (``alpha_bits: 16``), else fp32. A per-layer α lives in
the record's params instead (``{"alpha": α, "inline": 1}``; a float32 value written as
JSON reads back bit for bit), which saves a stream record, its checksum and its blob
span: on a 50k-weight MLP the header is a tenth of the file. Files whose per-layer α
is an ``alpha`` stream (no ``inline``) still load. This is the form for float activations; the
±1-activation networks of Bitwise NNs have their own form. The runtime module computes
sums of activations over the positive and negative sets by table lookups, then one
scale per output (:mod:`torchshrink.runtime.binary`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from ..format.errors import TskFormatError, check_shape
from ..format.streams import FLOAT_CODECS, Encoded, Options, float_stream, int_stream
from ..quantize.pow2 import grid_codes, grid_values
from .base import Form, StreamReader, codes, floats, get, grid_exp


def inline_floats(params: Mapping[str, Any], keys: tuple[str, ...], form: str) -> np.ndarray:
    """The float32 values a record holds in its params under ``keys`` (finite JSON numbers)."""
    values = [params.get(k) for k in keys]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values):
        raise TskFormatError(f"a {form} record's params {list(keys)} must be finite numbers; the file is corrupted.")
    return np.array(values, np.float32)


def alpha_of(packed: Mapping[str, Any], shape: tuple[int, ...]) -> np.ndarray:
    """The validated α of a binary packed value, shaped to broadcast along the output dimension."""
    alpha = floats(get(packed, "alpha", "binary"), "The 'binary' alpha", 1)
    out = shape[0] if shape else 1
    if alpha.size not in (1, out):
        raise TskFormatError(f"The 'binary' alpha must hold 1 or {out} (output channels) values. Got {alpha.size}.")
    return alpha.reshape(-1, *([1] * (len(shape) - 1))) if alpha.size > 1 else alpha.reshape(())


class Binary(Form):
    name = "binary"
    packs = "binary"
    selected_by = ("bitpack",)
    ROLES = {"positive": ("bitpack",), "alpha": FLOAT_CODECS}
    weight_role = "positive"

    def roles(self, params: Mapping[str, Any], name: str) -> dict[str, tuple[str, ...]]:
        if params.get("inline") == 1:
            return {"positive": self.ROLES["positive"]}
        if "alpha_exp" in params:
            return {"positive": self.ROLES["positive"], "alpha": ("bitpack",)}
        return self.ROLES

    def encode(self, value: dict, plan: Any, opts: Options) -> Encoded:
        alpha = np.ascontiguousarray(value["alpha"], dtype=np.float32).reshape(-1)
        positive = int_stream("positive", value["positive"], 1, False)
        if alpha.size == 1:  # exact: float(np.float32) -> JSON -> float32 is the identity
            return Encoded("binary", "binary(1b)", {"alpha": float(alpha[0]), "inline": 1}, [positive])
        grid = grid_codes(alpha, 8, signed=False)
        if grid is not None:  # BWN's α trained on an 8-bit power-of-two grid
            return Encoded("binary", "binary(1b),alpha/channel:8b", {"alpha_mean": float(alpha.mean()),
                           "alpha_exp": grid[1]}, [positive, int_stream("alpha", grid[0], 8, False)])
        half = bool(np.array_equal(alpha.astype(np.float16).astype(np.float32), alpha))  # exact in fp16 (BWN's α)
        return Encoded("binary", "binary(1b),alpha/channel", {"alpha_mean": float(alpha.mean())},
                       [positive, float_stream("alpha", alpha, "float16" if half else None)])

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> dict:
        if rec["params"].get("inline") == 1:
            alpha = inline_floats(rec["params"], ("alpha",), "binary")
        elif "alpha_exp" in rec["params"]:
            alpha = grid_values(read("alpha", ndim=1), grid_exp(rec["params"], "alpha_exp", "binary"), 8, signed=False)
        else:
            alpha = read("alpha", ndim=1).astype(np.float32)  # fp16 where that was exact
        return {"form": "binary", "shape": rec["shape"], "positive": read("positive", rec["shape"]), "alpha": alpha}

    def unpack(self, packed: Mapping[str, Any]) -> np.ndarray:
        shape, _ = check_shape(get(packed, "shape", "binary"))
        alpha = alpha_of(packed, shape)
        positive = codes(get(packed, "positive", "binary"), "The 'binary' signs", shape, 2)
        return np.where(positive.astype(bool), alpha, -alpha).astype(np.float32)

    def runtime(self, layer: nn.Module, packed: Mapping[str, Any]) -> nn.Module | None:
        from ..runtime.binary import binary_layer

        return binary_layer(layer, packed)
