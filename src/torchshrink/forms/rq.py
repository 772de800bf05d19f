"""``rq``: residual quantization (Gong et al. 2014 §3.3), stage by stage.

Packed kind ``"rq"``::

    {"form": "rq", "shape": [out, *rest], "subvector": d, "pad": p,
     "stages": [{"codebooks": float32[S, K_t, d], "codes": uint[out, S]}, ...]}

Each stage decodes like ``pq`` to ``G_t`` (float32, padded width); the weight is
``acc = G_0; acc = acc + G_1; ...; acc = acc + G_{T-1}`` -- float32 additions, elementwise,
left to right in stage order, starting from ``G_0`` itself (not from zeros, which would
turn a -0.0 into +0.0). Then pad columns are dropped and the result reshaped. Streams:
``stages.<t>.codebooks`` and ``stages.<t>.codes`` per stage. No kernel runs it yet: a
loaded model uses the decoded dense layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..format.errors import TskFormatError, check_int
from ..format.streams import FLOAT_CODECS, INT_CODECS, Encoded, Options
from .base import Form, StreamReader, get
from .pq import codebook_streams, gather, layout, read_stage

MAX_STAGES = 64


class RQ(Form):
    name = "rq"
    packs = "rq"
    selected_by = ("bitpack",)

    def roles(self, params: Mapping[str, Any], name: str) -> dict[str, tuple[str, ...]]:
        n = check_int(params.get("stages"), f"stages of {name}", 1, MAX_STAGES)
        return {f"stages.{t}.{part}": (FLOAT_CODECS if part == "codebooks" else INT_CODECS)
                for t in range(n) for part in ("codebooks", "codes")}

    def encode(self, value: dict, plan: Any, opts: Options) -> Encoded:
        streams, bits_list, used = [], [], False
        for t, stage in enumerate(value["stages"]):
            s, bits, huff = codebook_streams(stage, f"stages.{t}.", opts)
            streams += s
            bits_list.append(bits)
            used |= huff
        d, pad = int(value["subvector"]), int(value["pad"])
        shape = "x".join(map(str, bits_list))
        return Encoded("rq", f"rq({shape}b,d={d})" + ("+huffman" if used else ""),
                       {"subvector": d, "pad": pad, "stages": len(bits_list)}, streams)

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> dict:
        p = rec["params"]
        stages = [read_stage(read, rec, f"stages.{t}.") for t in range(p["stages"])]
        return {"form": "rq", "shape": rec["shape"], "subvector": p.get("subvector"), "pad": p.get("pad"),
                "stages": stages}

    def unpack(self, packed: Mapping[str, Any]) -> np.ndarray:
        shape, n_in, d, pad = layout(packed, "rq")
        out, n_sub = shape[0], (n_in + pad) // d
        stages = get(packed, "stages", "rq")
        if not isinstance(stages, (list, tuple)) or not stages:
            raise TskFormatError("'rq' stages must be a non-empty list of {'codebooks', 'codes'} dicts.")
        acc = None
        for t, stage in enumerate(stages):
            if not isinstance(stage, Mapping):
                raise TskFormatError(f"'rq' stage {t} must be a dict with 'codebooks' and 'codes'.")
            g = gather(get(stage, "codebooks", "rq"), get(stage, "codes", "rq"), out, n_sub, d, f"'rq' stage {t}")
            acc = g if acc is None else np.add(acc, g, out=acc)  # float32 + float32, stage order, in place
        return np.ascontiguousarray(acc[:, :n_in]).reshape(shape)
