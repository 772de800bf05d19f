"""The Form interface: how one tensor is stored, decoded, checked and run.

A *form* is one way of storing a tensor in a ``.tsk`` file (the record's ``"form"``):
its streams (roles and the codecs each may use), an exact encoder that picks its
smallest variant, a decoder back to the *packed* value, a plain reference ``unpack`` to
the float32 weight, and the runtime module that runs the packed value directly.

The *packed* value is what a weight transform's ``pack(w_in)`` returns: a dict with
``"form"`` naming its packed kind (``"shared"``, ``"pq"``, ...), ``"shape"`` and the
arrays. Several forms may store one packed kind (``shared`` with dense indices,
``shared_sparse`` with relative-index ones); a form with ``packs = None`` stores the
plain tensor (a numpy array) of any layer. Saving weighs every applicable form and keeps
the smallest; a *codec* only ever means how one stream becomes bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import nn

from ..format.errors import TskFormatError
from ..format.streams import Encoded, Options

#: Reads one decoded stream of the current tensor: ``read(role, shape=None, ndim=None)``;
#: the stream's claimed shape is checked (exactly, or its rank) before it is decoded.
StreamReader = Callable[..., np.ndarray]
FLOATS = ("float32", "float16")


@dataclass(frozen=True)
class Plain:
    """What a form with ``packs = None`` stores: a tensor's values and its dtype name.

    ``values`` is the numpy array (a bfloat16 tensor as its uint16 bits).
    """

    values: np.ndarray
    dtype: str


class Form:
    """Base class of forms; one subclass per file under :mod:`torchshrink.forms`.

    Class attributes:
        name: the record's ``"form"``.
        packs: the packed kind stored (``None``: the plain tensor, a :class:`Plain`).
        selected_by: forced codec names (``save(codecs=...)``) that choose this form.
        dtypes: record dtypes this form stores (packed forms: float32, as their codebooks are).
        ROLES: stream role -> codecs allowed (override :meth:`roles` when they depend on params).
        index_role / weight_role: the streams that hold positions and per-weight values, for
            reports in Deep Compression's "index bits / weight bits" terms (None: no such stream).
    """

    name: ClassVar[str]
    packs: ClassVar[str | None] = None
    selected_by: ClassVar[tuple[str, ...]] = ()
    dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    ROLES: ClassVar[dict[str, tuple[str, ...]]] = {}
    index_role: ClassVar[str | None] = None
    weight_role: ClassVar[str | None] = None

    def roles(self, params: Mapping[str, Any], name: str) -> dict[str, tuple[str, ...]]:
        """The streams a record of this form must hold, with the codecs each may use."""
        return self.ROLES

    def plan(self, value: Any, opts: Options) -> tuple[int, Any] | None:
        """(exact bytes, plan) of the smallest variant allowed by ``opts``, or None if none fits.

        The default encodes and measures; forms with many variants size them from
        histograms instead and encode only the winner in :meth:`encode`.
        """
        enc = self.encode(value, None, opts)
        return enc.nbytes, enc

    def encode(self, value: Any, plan: Any, opts: Options) -> Encoded:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, read: StreamReader, rec: Mapping[str, Any]) -> Any:  # pragma: no cover - abstract
        """The packed value (or, for ``packs = None``, the array) of a validated record."""
        raise NotImplementedError

    def unpack(self, packed: Any) -> np.ndarray:
        """The float32 weight of a packed value: the reference every kernel is checked against."""
        return packed

    def runtime(self, layer: nn.Module, packed: Any) -> nn.Module | None:
        """A module that runs ``layer`` (plain, with decoded weights) from ``packed``, or None."""
        return None


# --- checks shared by the packed forms' unpack (a packed value may come from a file) ---------


def get(packed: Mapping[str, Any], key: str, form: str) -> Any:
    if key not in packed:
        raise TskFormatError(f"Packed form {form!r} lacks the key {key!r}.")
    return packed[key]


def floats(value: Any, what: str, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype != np.float32 or arr.ndim != ndim:
        raise TskFormatError(f"{what} must be a {ndim}-D float32 array. Got {arr.dtype} with shape {arr.shape}.")
    return arr


def codes(value: Any, what: str, shape: tuple[int, ...], k: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "ui" or arr.shape != shape:
        raise TskFormatError(
            f"{what} must be an integer array of shape {list(shape)}. Got {arr.dtype} {list(arr.shape)}."
        )
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= k):
        raise TskFormatError(f"{what} must lie in [0, {k - 1}] for a codebook of {k} entries; the data is corrupted.")
    return arr  # numpy indexes with any integer dtype: no int64 copy of a weight-sized array


#: Exponents ``e`` a stored power-of-two grid (``k · 2^e``, :mod:`~torchshrink.quantize.pow2`) may
#: have: float32's normal range, with room for an 8-bit code.
GRID_EXP_RANGE = (-140, 120)


def grid_exp(params: Mapping[str, Any], key: str, form: str) -> int:
    """The grid exponent a record's ``params[key]`` holds: an integer in :data:`GRID_EXP_RANGE`."""
    exp = params.get(key)
    if not isinstance(exp, int) or isinstance(exp, bool) or not GRID_EXP_RANGE[0] <= exp <= GRID_EXP_RANGE[1]:
        raise TskFormatError(f"a {form} record's {key} must be an integer in {list(GRID_EXP_RANGE)}; "
                             "the file is corrupted.")
    return exp
