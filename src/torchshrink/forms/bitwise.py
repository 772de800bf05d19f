"""``bitwise``: ±1 weights of Bitwise Neural Networks (Kim & Smaragdis 2016), one bit each.

Packed kind ``"bitwise"``::

    {"form": "bitwise", "shape": [...], "signs": uint8[shape] (1 = +1, 0 = -1),
     "mask": uint8[shape] (optional; 0 = a weight the sparsity threshold set to 0)}
    W = where(signs, +1, -1) * mask

Streams: ``signs`` (1-bit bit-packed, LSB-first, :mod:`torchshrink.format.bitpack`) and, when
the record's ``params`` say ``"masked": true``, ``mask`` (1-bit). A layer's batch norm and
sign are stored apart as integer thresholds (``ThresholdSign`` buffers). The runtime is the
XNOR–popcount kernel weight :class:`~torchshrink.runtime.xnor.XnorWeight` (Linear layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from ..format.errors import TskFormatError, check_shape
from ..format.streams import Encoded, Options, int_stream
from .base import Form, StreamReader, codes, get

BIT_CODECS = ("bitpack",)


class Bitwise(Form):
    name = "bitwise"
    packs = "bitwise"
    selected_by = ("bitpack",)
    weight_role = "signs"

    def roles(self, params: Mapping[str, Any], name: str) -> dict[str, tuple[str, ...]]:
        masked = params.get("masked", False)
        if not isinstance(masked, bool):
            raise TskFormatError(f"Tensor {name!r} (bitwise): params 'masked' must be true or false. Got {masked!r}.")
        return {"signs": BIT_CODECS, "mask": BIT_CODECS} if masked else {"signs": BIT_CODECS}

    def encode(self, value: dict, plan: Any, opts: Options) -> Encoded:
        streams = [int_stream("signs", value["signs"], 1, False)]
        masked = value.get("mask") is not None
        if masked:
            streams.append(int_stream("mask", value["mask"], 1, False))
        return Encoded("bitwise", "bitwise(1b" + ("+mask)" if masked else ")"), {"masked": masked}, streams)

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> dict:
        out = {"form": "bitwise", "shape": rec["shape"], "signs": read("signs", rec["shape"])}
        if rec["params"].get("masked"):
            out["mask"] = read("mask", rec["shape"])
        return out

    def unpack(self, packed: Mapping[str, Any]) -> np.ndarray:
        shape, _ = check_shape(get(packed, "shape", "bitwise"))
        signs = codes(get(packed, "signs", "bitwise"), "The 'bitwise' signs", shape, 2)
        w = np.where(signs.astype(bool), np.float32(1.0), np.float32(-1.0))
        if packed.get("mask") is not None:
            w = w * codes(packed["mask"], "The 'bitwise' mask", shape, 2).astype(np.float32)
        return w.astype(np.float32, copy=False)

    def runtime(self, layer: nn.Module, packed: Mapping[str, Any]) -> nn.Module | None:
        from ..runtime.modules import compressed_layer
        from ..runtime.xnor import XnorWeight

        if not isinstance(layer, nn.Linear):
            return None  # a binary conv needs ±1 padding, which a decoded nn.Conv2d does not do
        return compressed_layer(layer, XnorWeight.from_packed(dict(packed)))
