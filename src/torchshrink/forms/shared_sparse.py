"""``shared_sparse``: shared weights whose codebook indices are stored relative-index sparse.

The packed kind is ``"shared"`` (see :mod:`.shared`); index 0 (the pruned zero) is the
background. Streams: ``codebook``, ``gaps`` (zero runs, ``index_bits`` wide, a padding
entry of code 0 on overflow) and ``codes`` (the nonzero entries' indices), as Deep
Compression stores a pruned, shared layer (§3, Fig. 2; EIE's 4-bit index + 4-bit run).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..format.errors import check_int
from ..format.sparse import from_relative_index, to_relative_index
from ..format.streams import FLOAT_CODECS, INT_CODECS, Encoded, Options, code_bits, float_stream, gap_hist
from ..format.streams import index_widths, int_choice, int_stream, runs
from .base import StreamReader
from .shared import Shared, check_zero


class SharedSparse(Shared):
    name = "shared_sparse"
    selected_by = ("sparse",)
    ROLES = {"codebook": FLOAT_CODECS, "gaps": INT_CODECS, "codes": INT_CODECS}
    index_role, weight_role = "gaps", "codes"

    def plan(self, value: dict, opts: Options) -> tuple[int, Any] | None:
        k = np.asarray(value["codebook"]).size
        bits = code_bits(k)
        indices = np.asarray(value["indices"]).reshape(-1).astype(np.int64)
        stored = indices != 0
        zero_runs, tail = runs(stored)
        code_hist = np.bincount(indices[stored], minlength=k)
        best = None
        for b in index_widths(opts):
            count, gaps = gap_hist(zero_runs, tail, b)
            gap_bytes, huff_g = int_choice(count, b, gaps, opts.huffman)
            ch = code_hist.copy()
            ch[0] += count - zero_runs.size
            code_bytes, huff_c = int_choice(count, bits, ch, opts.huffman)
            total = 4 * k + gap_bytes + code_bytes
            if best is None or total < best[0]:
                best = (total, (b, huff_g, huff_c))
        return best

    def encode(self, value: dict, plan: Any, opts: Options) -> Encoded:
        codebook = np.ascontiguousarray(value["codebook"], dtype=np.float32)
        bits = code_bits(codebook.size)
        b, huff_g, huff_c = plan
        gaps, entry_codes = to_relative_index(np.asarray(value["indices"]).astype(np.uint16), b, zero_code=0)
        which = [n for n, h in (("gaps", huff_g), ("codes", huff_c)) if h]
        label = f"shared({bits}b)/sparse({b}b)" + (f"+huffman({','.join(which)})" if which else "")
        streams = [float_stream("codebook", codebook), int_stream("gaps", gaps, b, huff_g),
                   int_stream("codes", entry_codes, bits, huff_c)]
        return Encoded("shared_sparse", label, {"bits": bits, "index_bits": b}, streams)

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> dict:
        b = check_int(rec["params"].get("index_bits"), "index_bits", 1, 16)
        codebook = check_zero(read("codebook", ndim=1))
        gaps = read("gaps", ndim=1)
        entry_codes = read("codes", list(gaps.shape))
        indices = from_relative_index(gaps, entry_codes, rec["shape"], b, zero_code=0)
        return {"form": "shared", "shape": rec["shape"], "codebook": codebook, "indices": indices}
