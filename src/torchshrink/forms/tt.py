"""``tt``: a weight stored as Tensor-Train matrix cores (Novikov et al. 2015, Eq. 2).

Packed kind ``"tt"``::

    {"form": "tt", "shape": [out, *rest], "cores": [float32[r_0, m_1, n_1, r_1], ...]}

with ``r_0 = r_d = 1``, ``Π m_k = out`` and ``Π n_k = prod(rest)``; a bias (``shape: [out]``)
is a TT-vector, its in modes all 1. The weight is
:func:`torchshrink.factorize.tt.tt_to_dense` of the cores (float64 products, rounded
once to float32) reshaped to ``shape``, the very function the :class:`TTMatrix`
transform's forward runs, so a file decodes bit for bit to the trained layer. Streams:
``cores.<k>`` (fp32), one per core. The runtime module contracts the cores with the
input or uses the reconstructed weight, whichever this machine runs faster
(:mod:`torchshrink.runtime.tt`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from ..format.errors import TskFormatError, check_int, check_shape
from ..format.streams import FLOAT_CODECS, Encoded, Options, float_stream
from .base import Form, StreamReader, floats, get

MAX_CORES = 16


def check_cores(packed: Mapping[str, Any]) -> tuple[tuple[int, ...], list[np.ndarray]]:
    """Validated (shape, cores) of a ``tt`` packed value: 4-D float32 cores whose ranks chain
    from 1 to 1 and whose modes multiply to the weight's rows and columns."""
    shape, _ = check_shape(get(packed, "shape", "tt"))
    cores = get(packed, "cores", "tt")
    if not shape or not isinstance(cores, (list, tuple)) or not 1 <= len(cores) <= MAX_CORES:
        raise TskFormatError(f"A 'tt' tensor needs a shape of 1+ dimensions and 1 to {MAX_CORES} cores.")
    cores = [floats(c, f"'tt' core {k}", 4) for k, c in enumerate(cores)]
    ranks = [c.shape[0] for c in cores] + [cores[-1].shape[3]]
    chained = all(a.shape[3] == b.shape[0] for a, b in zip(cores, cores[1:]))
    if ranks[0] != 1 or ranks[-1] != 1 or not chained or min(min(c.shape) for c in cores) < 1:
        raise TskFormatError(f"'tt' core ranks must chain from 1 to 1. Got {[list(c.shape) for c in cores]}.")
    m, n = math.prod(c.shape[1] for c in cores), math.prod(c.shape[2] for c in cores)
    if m != shape[0] or n != math.prod(shape[1:]):
        raise TskFormatError(f"'tt' cores give a {m} x {n} matrix; the weight {list(shape)} needs "
                             f"{shape[0]} x {math.prod(shape[1:])}.")
    return shape, cores


class TT(Form):
    name = "tt"
    packs = "tt"
    selected_by = ("bitpack",)

    def roles(self, params: Mapping[str, Any], name: str) -> dict[str, tuple[str, ...]]:
        n = check_int(params.get("cores"), f"cores of {name}", 1, MAX_CORES)
        return {f"cores.{k}": FLOAT_CODECS for k in range(n)}

    def encode(self, value: dict, plan: Any, opts: Options) -> Encoded:
        cores = [np.ascontiguousarray(c, dtype=np.float32) for c in value["cores"]]
        ranks = [c.shape[0] for c in cores[1:]]
        return Encoded("tt", f"tt(d={len(cores)},r={max(ranks, default=1)})", {"cores": len(cores)},
                       [float_stream(f"cores.{k}", c) for k, c in enumerate(cores)])

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> dict:
        n = rec["params"]["cores"]
        return {"form": "tt", "shape": rec["shape"], "cores": [read(f"cores.{k}", ndim=4) for k in range(n)]}

    def unpack(self, packed: Mapping[str, Any]) -> np.ndarray:
        from ..factorize.tt import tt_to_dense

        shape, cores = check_cores(packed)
        w = tt_to_dense([torch.from_numpy(np.ascontiguousarray(c)) for c in cores], exact=True)
        return np.ascontiguousarray(w.numpy()).reshape(shape)

    def runtime(self, layer: nn.Module, packed: Mapping[str, Any]) -> nn.Module | None:
        from ..runtime.modules import compressed_layer
        from ..runtime.tt import TTKernel

        return compressed_layer(layer, TTKernel.from_packed(packed))
