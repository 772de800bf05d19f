"""``sparse``: relative-index sparse floats (Deep Compression §3, Fig. 2; EIE).

Streams ``gaps`` (an int stream of zero runs, ``index_bits`` wide, a padding zero on
overflow) and ``values`` (the stored floats); see :mod:`torchshrink.format.sparse` for
the byte layout. Every gap width in 1..12 is sized exactly and the cheapest is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..format.errors import TskFormatError, check_int
from ..format.sparse import from_relative_index, to_relative_index
from ..format.streams import FLOAT_CODECS, INT_CODECS, Encoded, Options, float_stream, gap_hist, index_widths
from ..format.streams import int_choice, int_stream, runs
from .base import FLOATS, Form, Plain, StreamReader


class Sparse(Form):
    """Nonzero floats with their zero runs. -0.0 is stored as +0.0 (a pruned negative weight is
    ``w * 0 = -0.0``; keeping its sign would cost a full value per pruned weight, and
    ``-0.0 == 0.0`` changes no layer output)."""

    name = "sparse"
    selected_by = ("sparse",)
    dtypes = FLOATS
    ROLES = {"gaps": INT_CODECS, "values": FLOAT_CODECS}
    index_role, weight_role = "gaps", "values"

    def plan(self, value: Plain, opts: Options) -> tuple[int, Any] | None:
        x = value.values + value.values.dtype.type(0)  # -0.0 -> +0.0, every other value unchanged
        size = x.dtype.itemsize
        stored = x.reshape(-1).view(np.uint32 if size == 4 else np.uint16) != 0
        nnz = int(stored.sum())
        if opts.codec == "auto" and size * nnz + nnz // 8 >= size * x.size:
            return None  # the values alone cost as much as the dense tensor
        zero_runs, tail = runs(stored)
        best = None
        for b in index_widths(opts):
            count, counts = gap_hist(zero_runs, tail, b)
            gap_bytes, huff = int_choice(count, b, counts, opts.huffman)
            total = gap_bytes + size * count
            if best is None or total < best[0]:
                best = (total, (x, b, huff))
        return best

    def encode(self, value: Plain, plan: Any, opts: Options) -> Encoded:
        x, b, huff = plan
        gaps, values = to_relative_index(x, b)
        return Encoded("sparse", f"sparse({b}b)" + ("+huffman" if huff else ""), {"index_bits": b},
                       [int_stream("gaps", gaps, b, huff), float_stream("values", values)])

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> np.ndarray:
        b = check_int(rec["params"].get("index_bits"), "index_bits", 1, 16)
        gaps = read("gaps", ndim=1)
        if rec["streams"]["values"]["meta"].get("dtype") != rec["dtype"]:
            raise TskFormatError(f"the values are {rec['streams']['values']['meta'].get('dtype')!r}, "
                                 f"the record says {rec['dtype']!r}; the file is corrupted.")
        values = read("values", list(gaps.shape))
        return from_relative_index(gaps, values, rec["shape"], b)

    def runtime(self, layer: nn.Module, packed: Any) -> nn.Module | None:
        """A pruned fp32 Linear / Conv2d runs the CSR kernel (:mod:`torchshrink.runtime.sparse`)."""
        from ..runtime.modules import compressed_layer
        from ..runtime.sparse import SparseKernel

        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dtype != torch.float32:
            return None
        return compressed_layer(layer, SparseKernel.from_dense(np.asarray(packed)))
