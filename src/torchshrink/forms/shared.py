"""``shared``: k-means weight sharing (Deep Compression §3) with dense codebook indices.

Packed kind ``"shared"``::

    {"form": "shared", "shape": [...], "codebook": float32[k], "indices": uint[shape]}
    W = codebook[indices]                       # a gather, no arithmetic

``codebook[0]`` is 0.0 by convention (index 0 = pruned), which the ``shared_sparse`` form
relies on to skip zeros. Streams: ``codebook`` (fp32) and ``indices`` (an int stream of
``ceil(log2 k)``-bit codes, bit-packed or Huffman coded). The runtime module is the
EIE-style sparse shared-weight layer (:mod:`torchshrink.runtime.shared`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from ..format.errors import TskFormatError, check_shape
from ..format.streams import FLOAT_CODECS, INT_CODECS, Encoded, Options, code_bits, float_stream, int_choice
from ..format.streams import int_stream
from .base import Form, StreamReader, codes, floats, get

MAX_CODEBOOK = 1 << 16


def check_zero(codebook: np.ndarray) -> np.ndarray:
    """A stored codebook, refused unless ``codebook[0] == 0.0`` (index 0 is a pruned weight).

    Every writer stores the zero first; the runtime kernels skip index 0 as a zero, so a
    file that breaks the rule would load one way and run another.
    """
    if codebook.size == 0 or codebook[0] != 0:
        raise TskFormatError("the shared codebook must start with 0.0 (index 0 = a pruned weight); "
                             "the file is corrupted.")
    return codebook


class Shared(Form):
    name = "shared"
    packs = "shared"
    selected_by = ("bitpack",)
    ROLES = {"codebook": FLOAT_CODECS, "indices": INT_CODECS}
    weight_role = "indices"

    def plan(self, value: dict, opts: Options) -> tuple[int, Any] | None:
        k = np.asarray(value["codebook"]).size
        indices = np.asarray(value["indices"]).reshape(-1).astype(np.int64)
        hist = np.bincount(indices, minlength=k) if opts.huffman is not False else None
        size, huff = int_choice(indices.size, code_bits(k), hist, opts.huffman)
        return 4 * k + size, huff

    def encode(self, value: dict, plan: Any, opts: Options) -> Encoded:
        codebook = np.ascontiguousarray(value["codebook"], dtype=np.float32)
        bits = code_bits(codebook.size)
        label = f"shared({bits}b)" + ("+huffman" if plan else "")
        return Encoded("shared", label, {"bits": bits},
                       [float_stream("codebook", codebook), int_stream("indices", value["indices"], bits, plan)])

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> dict:
        return {"form": "shared", "shape": rec["shape"], "codebook": check_zero(read("codebook", ndim=1)),
                "indices": read("indices", rec["shape"])}

    def unpack(self, packed: Mapping[str, Any]) -> np.ndarray:
        shape, _ = check_shape(get(packed, "shape", "shared"))
        codebook = floats(get(packed, "codebook", "shared"), "The 'shared' codebook", 1)
        if not 1 <= codebook.size <= MAX_CODEBOOK:
            raise TskFormatError(f"The 'shared' codebook must have 1 to {MAX_CODEBOOK} entries. Got {codebook.size}.")
        indices = codes(get(packed, "indices", "shared"), "The 'shared' indices", shape, codebook.size)
        return codebook[indices]

    def runtime(self, layer: nn.Module, packed: Mapping[str, Any]) -> nn.Module | None:
        from ..runtime.modules import compressed_layer
        from ..runtime.shared import SharedWeightsKernel

        return compressed_layer(layer, SharedWeightsKernel.from_packed(packed))
