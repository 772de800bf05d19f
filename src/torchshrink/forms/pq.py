"""``pq``: product quantization along the input dimension (Gong et al. 2014; Q-CNN, Wu et al. 2016).

Packed kind ``"pq"``::

    {"form": "pq", "shape": [out, *rest], "codebooks": float32[S, K, d],
     "codes": uint[out, S], "subvector": d, "pad": p}

The weight is seen as the matrix ``W2 = W.reshape(out, n_in)`` with ``n_in = prod(rest)``
(C order, so a conv's ``(c_in, kh, kw)`` entries are contiguous); ``W2`` padded on the
right with ``p`` zero columns (``0 <= p < d``) has ``S * d = n_in + p`` columns and
``Wpad[o, s*d:(s+1)*d] = codebooks[s, codes[o, s]]``; then the ``p`` pad columns are
dropped and the result reshaped to ``shape``. Only gathers. Streams: ``codebooks`` (fp32,
or fp16 when every codeword is a float16 value, which stores them exactly) and ``codes``
(an int stream).

Q-CNN's conv layout (Wu et al. §3.2; :mod:`torchshrink.quantize.qcnn`) adds the param
``"layout": "channels"``: the columns of ``W2`` are then in ``(kh, kw, c_in)`` order
(sub-vectors over input channels at each kernel position, ``p = 0``), and the decoded
``[out, kh, kw, c_in]`` is transposed back to ``[out, c_in, kh, kw]``. Without the param
the layout is ``"rows"`` (above). The runtime module runs Q-CNN lookup tables
(:mod:`torchshrink.runtime.pq`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import nn

from ..format.errors import MAX_ELEMENTS, TskFormatError, check_int, check_shape
from ..format.streams import FLOAT_CODECS, INT_CODECS, Encoded, Options, Stream, code_bits, float_stream
from ..format.streams import int_choice, int_stream
from .base import Form, StreamReader, codes, floats, get

MAX_CODEBOOK = 1 << 16


def layout(packed: Mapping[str, Any], form: str) -> tuple[tuple[int, ...], int, int, int]:
    """Validated (shape, n_in, subvector, pad) of a pq / rq packed value."""
    shape, _ = check_shape(get(packed, "shape", form))
    if len(shape) < 2:
        raise TskFormatError(f"A {form!r} weight must have at least 2 dimensions. Got shape {list(shape)}.")
    n_in = int(np.prod(shape[1:], dtype=np.int64))
    d = check_int(get(packed, "subvector", form), "subvector", 1, MAX_ELEMENTS)
    pad = check_int(get(packed, "pad", form), "pad", 0, d - 1)
    if (n_in + pad) % d:
        raise TskFormatError(f"{form!r}: {n_in} inputs + pad {pad} is not a multiple of the subvector {d}.")
    return shape, n_in, d, pad


def gather(codebooks: Any, entry_codes: Any, out: int, n_sub: int, d: int, what: str) -> np.ndarray:
    """``G[o, s*d:(s+1)*d] = codebooks[s, codes[o, s]]`` as an ``(out, n_sub * d)`` array."""
    cb = floats(codebooks, f"{what} codebooks", 3)
    if cb.shape[0] != n_sub or cb.shape[2] != d or not 1 <= cb.shape[1] <= MAX_CODEBOOK:
        raise TskFormatError(
            f"{what} codebooks must have shape [{n_sub}, K, {d}] with 1 <= K <= {MAX_CODEBOOK}. Got {list(cb.shape)}."
        )
    idx = codes(entry_codes, f"{what} codes", (out, n_sub), cb.shape[1])
    return cb[np.arange(n_sub)[None, :], idx].reshape(out, n_sub * d)


def codebook_streams(stage: Mapping[str, Any], prefix: str, opts: Options) -> tuple[list[Stream], int, bool]:
    """The ``codebooks`` and ``codes`` streams of one pq stage: (streams, code bits, Huffman used)."""
    codebooks = np.ascontiguousarray(stage["codebooks"], dtype=np.float32)
    entry_codes = np.asarray(stage["codes"])
    half = codebooks.astype(np.float16)
    exact16 = bool(np.array_equal(half.astype(np.float32).view(np.uint32), codebooks.view(np.uint32)))
    bits = code_bits(codebooks.shape[1])
    hist = np.bincount(entry_codes.reshape(-1).astype(np.int64), minlength=codebooks.shape[1])
    _, huff = int_choice(entry_codes.size, bits, None if opts.huffman is False else hist, opts.huffman)
    cb_stream = float_stream(prefix + "codebooks", codebooks, "float16" if exact16 else None)
    return [cb_stream, int_stream(prefix + "codes", entry_codes, bits, huff)], bits, huff


def read_stage(read: StreamReader, rec: Mapping[str, Any], prefix: str) -> dict[str, np.ndarray]:
    cb = np.asarray(read(prefix + "codebooks", ndim=3), dtype=np.float32)  # fp16 storage: exact codewords
    return {"codebooks": cb, "codes": read(prefix + "codes", [rec["shape"][0] if rec["shape"] else 0, cb.shape[0]])}


def channel_layout(packed: Mapping[str, Any], shape: tuple[int, ...], d: int, pad: int) -> bool:
    """True for Q-CNN's ``"channels"`` conv layout (validated), False for ``"rows"``."""
    kind = packed.get("layout", "rows")
    if kind == "rows":
        return False
    if kind != "channels" or len(shape) != 4 or pad or shape[1] % d:
        raise TskFormatError(f"'pq' layout must be 'rows', or 'channels' for a 4-d weight whose input channels "
                             f"the subvector divides (no pad). Got {kind!r} for shape {list(shape)}, d={d}, pad={pad}.")
    return True


class PQ(Form):
    name = "pq"
    packs = "pq"
    selected_by = ("bitpack",)
    ROLES = {"codebooks": FLOAT_CODECS, "codes": INT_CODECS}
    weight_role = "codes"

    def encode(self, value: dict, plan: Any, opts: Options) -> Encoded:
        streams, bits, huff = codebook_streams(value, "", opts)
        d, pad = int(value["subvector"]), int(value["pad"])
        params = {"subvector": d, "pad": pad}
        if value.get("layout", "rows") != "rows":
            params["layout"] = value["layout"]
        label = f"pq({bits}b,d={d}" + (f",{value['layout']}" if "layout" in params else "") + ")"
        return Encoded("pq", label + ("+huffman" if huff else ""), params, streams)

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> dict:
        p = rec["params"]
        extra = {"layout": p["layout"]} if "layout" in p else {}
        return {"form": "pq", "shape": rec["shape"], "subvector": p.get("subvector"), "pad": p.get("pad"),
                **extra, **read_stage(read, rec, "")}

    def unpack(self, packed: Mapping[str, Any]) -> np.ndarray:
        shape, n_in, d, pad = layout(packed, "pq")
        acc = gather(get(packed, "codebooks", "pq"), get(packed, "codes", "pq"), shape[0], (n_in + pad) // d, d,
                     "'pq'")
        if channel_layout(packed, shape, d, pad):
            out, c, kh, kw = shape
            return np.ascontiguousarray(acc.reshape(out, kh, kw, c).transpose(0, 3, 1, 2))
        return np.ascontiguousarray(acc[:, :n_in]).reshape(shape)

    def runtime(self, layer: nn.Module, packed: Mapping[str, Any]) -> nn.Module | None:
        from ..runtime.modules import compressed_layer
        from ..runtime.pq import PQKernel

        return compressed_layer(layer, PQKernel.from_packed(packed))
