"""Packed weight forms and their exact decode (the contract of ``packed.md``).

A weight transform that changes how a weight is *stored* implements ``pack(latent) ->
dict``; :func:`unpack` turns that dict back into the float32 effective weight. The
transform's ``forward`` must compute exactly the same float32 values (bit for bit, up to
the sign of zero), so the operations below are the reference order of operations:

``"shared"`` (Deep Compression weight sharing, Han et al. 2016 §3)::

    {"form": "shared", "shape": [...], "codebook": float32[k], "indices": uint[shape]}
    W = codebook[indices]                       # a gather, no arithmetic

``codebook[0]`` is 0.0 by convention (index 0 = pruned), which is what the sparse file
layout relies on to skip zeros; :func:`unpack` does not require it.

``"pq"`` (product quantization along the input dimension, Gong et al. 2014; Wu et al. 2016)::

    {"form": "pq", "shape": [out, *rest], "codebooks": float32[S, K, d],
     "codes": uint[out, S], "subvector": d, "pad": p}

The weight is seen as the matrix ``W2 = W.reshape(out, n_in)`` with ``n_in = prod(rest)``
(C order, so a conv's ``(c_in, kh, kw)`` entries are contiguous); ``W2`` padded on the
right with ``p`` zero columns (``0 <= p < d``) has ``S * d = n_in + p`` columns and
``Wpad[o, s*d:(s+1)*d] = codebooks[s, codes[o, s]]``; then the ``p`` pad columns are
dropped and the result reshaped to ``shape``. Again only gathers.

``"rq"`` (residual quantization, Gong et al. 2014 §3.3)::

    {"form": "rq", "shape": [out, *rest], "subvector": d, "pad": p,
     "stages": [{"codebooks": float32[S, K_t, d], "codes": uint[out, S]}, ...]}

Each stage decodes like ``"pq"`` to ``G_t`` (float32, padded width); the weight is
``acc = G_0; acc = acc + G_1; ...; acc = acc + G_{T-1}`` -- float32 additions, elementwise,
left to right in stage order, starting from ``G_0`` itself (not from zeros, which would
turn a -0.0 into +0.0). Then pad columns are dropped and the result reshaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import MAX_ELEMENTS, TskFormatError, check_int, check_shape

FORMS = ("shared", "pq", "rq")
MAX_CODEBOOK = 1 << 16


def unpack(packed: Mapping[str, Any]) -> np.ndarray:
    """The float32 effective weight of a packed form (see the module docstring)."""
    if not isinstance(packed, Mapping):
        raise TskFormatError(f"A packed weight must be a dict. Got {type(packed).__name__}.")
    form = packed.get("form")
    if form == "shared":
        return _unpack_shared(packed)
    if form in ("pq", "rq"):
        return _unpack_quantized(packed, form)
    raise TskFormatError(f"Unknown packed form {form!r}; expected one of {list(FORMS)}.")


def code_bits(k: int) -> int:
    """Bits needed for indices into a codebook of ``k`` entries (at least 1)."""
    return max(1, (int(k) - 1).bit_length())


def _get(packed: Mapping[str, Any], key: str, form: str) -> Any:
    if key not in packed:
        raise TskFormatError(f"Packed form {form!r} lacks the key {key!r}.")
    return packed[key]


def _floats(value: Any, what: str, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.float32 or arr.ndim != ndim:
        raise TskFormatError(f"{what} must be a {ndim}-D float32 array. Got {arr.dtype} with shape {arr.shape}.")
    return arr


def _codes(value: Any, what: str, shape: tuple[int, ...], k: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "ui" or arr.shape != shape:
        raise TskFormatError(
            f"{what} must be an integer array of shape {list(shape)}. Got {arr.dtype} {list(arr.shape)}."
        )
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= k):
        raise TskFormatError(f"{what} must lie in [0, {k - 1}] for a codebook of {k} entries; the data is corrupted.")
    return arr.astype(np.intp, copy=False)


def _unpack_shared(packed: Mapping[str, Any]) -> np.ndarray:
    shape, _ = check_shape(_get(packed, "shape", "shared"))
    codebook = _floats(_get(packed, "codebook", "shared"), "The 'shared' codebook", 1)
    if not 1 <= codebook.size <= MAX_CODEBOOK:
        raise TskFormatError(f"The 'shared' codebook must have 1 to {MAX_CODEBOOK} entries. Got {codebook.size}.")
    indices = _codes(_get(packed, "indices", "shared"), "The 'shared' indices", shape, codebook.size)
    return codebook[indices]


def _layout(packed: Mapping[str, Any], form: str) -> tuple[tuple[int, ...], int, int, int]:
    """Validated (shape, n_in, subvector, pad) of a pq / rq form."""
    shape, _ = check_shape(_get(packed, "shape", form))
    if len(shape) < 2:
        raise TskFormatError(f"A {form!r} weight must have at least 2 dimensions. Got shape {list(shape)}.")
    n_in = int(np.prod(shape[1:], dtype=np.int64))
    d = check_int(_get(packed, "subvector", form), "subvector", 1, MAX_ELEMENTS)
    pad = check_int(_get(packed, "pad", form), "pad", 0, d - 1)
    if (n_in + pad) % d:
        raise TskFormatError(f"{form!r}: {n_in} inputs + pad {pad} is not a multiple of the subvector {d}.")
    return shape, n_in, d, pad


def _gather(codebooks: Any, codes: Any, out: int, n_sub: int, d: int, what: str) -> np.ndarray:
    """``G[o, s*d:(s+1)*d] = codebooks[s, codes[o, s]]`` as an ``(out, n_sub * d)`` array."""
    cb = _floats(codebooks, f"{what} codebooks", 3)
    if cb.shape[0] != n_sub or cb.shape[2] != d or not 1 <= cb.shape[1] <= MAX_CODEBOOK:
        raise TskFormatError(
            f"{what} codebooks must have shape [{n_sub}, K, {d}] with 1 <= K <= {MAX_CODEBOOK}. Got {list(cb.shape)}."
        )
    idx = _codes(codes, f"{what} codes", (out, n_sub), cb.shape[1])
    return cb[np.arange(n_sub)[None, :], idx].reshape(out, n_sub * d)


def _unpack_quantized(packed: Mapping[str, Any], form: str) -> np.ndarray:
    shape, n_in, d, pad = _layout(packed, form)
    out, n_sub = shape[0], (n_in + pad) // d
    if form == "pq":
        acc = _gather(_get(packed, "codebooks", form), _get(packed, "codes", form), out, n_sub, d, "'pq'")
    else:
        stages = _get(packed, "stages", form)
        if not isinstance(stages, (list, tuple)) or not stages:
            raise TskFormatError("'rq' stages must be a non-empty list of {'codebooks', 'codes'} dicts.")
        acc = None
        for t, stage in enumerate(stages):
            if not isinstance(stage, Mapping):
                raise TskFormatError(f"'rq' stage {t} must be a dict with 'codebooks' and 'codes'.")
            g = _gather(_get(stage, "codebooks", form), _get(stage, "codes", form), out, n_sub, d, f"'rq' stage {t}")
            acc = g if acc is None else acc + g  # float32 + float32, stage order
    return np.ascontiguousarray(acc[:, :n_in]).reshape(shape)
