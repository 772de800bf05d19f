"""``dense``: the tensor's values as they are (fp32 / fp16 floats, any other dtype raw).

A float32 vector (0 or 1 dimensions: biases, norm scales) whose every value is exactly
a float16 (bit for bit after the round trip, so -0.0 stays -0.0) is stored in 16 bits:
exact, half the bytes. Biases trained fp16-representable (``half_bias`` of the ternary
and binary stages) get it, as do all-zero biases; forcing ``dense`` keeps 32 bits.
A 1-D vector on an 8-bit power-of-two grid (every value ``k · 2^e``, ``|k| <= 127``, one
``e``: biases trained with ``bias_bits: 8``, see :mod:`~torchshrink.quantize.pow2`) is
stored as 8-bit codes and ``e`` (``params["exp"]``), exactly, before fp16 is tried.
Matrices are left to the forms of their quantizers (an fp16-exact codebook weight is
stored by its packed form, which its runtime module runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..format.errors import TskFormatError
from ..format.codecs import RAW_DTYPES
from ..format.streams import Encoded, Options, Stream, float_stream, int_stream
from ..quantize.pow2 import grid_codes, grid_values
from .base import FLOATS, Form, Plain, StreamReader, grid_exp


def encode_raw(arr: np.ndarray, dtype_name: str) -> Stream:
    """Any dtype as its little-endian bytes; meta ``{"codec": "raw", "dtype", "shape"}``."""
    arr = np.asarray(arr, order="C")
    data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return Stream("data", data, {"codec": "raw", "dtype": dtype_name, "shape": list(arr.shape)}, 8 * arr.itemsize)


def fp16_exact(x: np.ndarray) -> bool:
    """True when every float32 value of ``x`` is a float16 value (bit for bit after the round trip)."""
    x = np.asarray(x, np.float32)
    with np.errstate(over="ignore"):
        back = x.astype(np.float16).astype(np.float32)
    return x.size > 0 and bool(np.array_equal(back.view(np.uint32), x.view(np.uint32)))


class Dense(Form):
    """One ``data`` stream: ``dense`` floats (``fp16`` when forced -- lossy -- or exact) or ``raw`` bytes."""

    name = "dense"
    selected_by = ("dense", "fp16")
    dtypes = tuple(RAW_DTYPES)
    ROLES = {"data": ("dense", "raw")}
    weight_role = "data"

    def roles(self, params: Mapping[str, Any], name: str) -> dict[str, tuple[str, ...]]:
        return {"data": ("bitpack",)} if "exp" in params else self.ROLES

    def encode(self, value: Plain, plan: Any, opts: Options) -> Encoded:
        x, dtype = value.values, value.dtype
        if dtype not in ("float32", "float16"):
            return Encoded("dense", f"raw:{dtype}", streams=[encode_raw(x, dtype)])
        if opts.codec == "fp16":
            return Encoded("dense", "dense:fp16", streams=[float_stream("data", x, "float16")])
        grid = grid_codes(x, 8, signed=True) if dtype == "float32" and opts.codec == "auto" and x.ndim == 1 else None
        if grid is not None:
            return Encoded("dense", "dense:int8(exact)", {"exp": grid[1]}, [int_stream("data", grid[0], 8, False)])
        if dtype == "float32" and opts.codec == "auto" and x.ndim <= 1 and fp16_exact(x):
            return Encoded("dense", "dense:fp16(exact)", streams=[float_stream("data", x, "float16")])
        label = "dense" if dtype == "float32" else f"dense:{dtype}"
        return Encoded("dense", label, streams=[float_stream("data", x)])

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> np.ndarray:
        if "exp" in rec["params"]:
            exp = grid_exp(rec["params"], "exp", "dense")
            if rec["dtype"] != "float32":
                raise TskFormatError(f"8-bit grid data under a {rec['dtype']!r} record; the file is corrupted.")
            return grid_values(read("data", rec["shape"]), exp, 8, signed=True)
        meta = rec["streams"]["data"]["meta"]
        if meta["codec"] == "raw" and meta.get("dtype") != rec["dtype"]:
            raise TskFormatError(f"raw dtype {meta.get('dtype')!r} differs from the record's {rec['dtype']!r}.")
        if meta["codec"] == "dense" and rec["dtype"] not in FLOATS:
            raise TskFormatError(f"a {rec['dtype']!r} tensor cannot be stored as dense floats; the file is corrupted.")
        if meta["codec"] == "dense" and meta.get("dtype") != rec["dtype"] and (meta.get("dtype"), rec["dtype"]) != (
                "float16", "float32"):  # fp16 storage of a float32 tensor (forced, lossy) is the one cast
            raise TskFormatError(f"dense {meta.get('dtype')!r} data under a {rec['dtype']!r} record; "
                                 "the file is corrupted.")
        return read("data", rec["shape"])
