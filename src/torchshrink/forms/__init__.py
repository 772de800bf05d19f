"""Stored forms: the only list of the ways a tensor can be stored in a ``.tsk`` file.

Each form is one file (a :class:`~torchshrink.forms.base.Form` subclass) plus one entry
in :data:`FORMS`; :mod:`torchshrink.format` saves, validates and loads through this
registry and names no form. A form defined elsewhere (a plugin, a test) joins with
:func:`register`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..format.errors import TskFormatError
from .base import Form, Plain
from .bitwise import Bitwise
from .dense import Dense
from .pq import PQ
from .rq import RQ
from .rowgrid import RowGrid
from .shared import Shared
from .shared_sparse import SharedSparse
from .sparse import Sparse
from .tt import TT
from .ternary import Ternary
from .binary import Binary

FORMS: dict[str, Form] = {f.name: f for f in (
    Dense(),
    Sparse(),
    Shared(),
    SharedSparse(),
    PQ(),
    RQ(),
    Bitwise(),
    TT(),
    Ternary(),
    Binary(),
    RowGrid(),
)}


def register(form: Form) -> Form:
    """Add ``form`` to :data:`FORMS` (a name already taken is an error)."""
    if form.name in FORMS:
        raise ValueError(f"a form named {form.name!r} is already registered")
    FORMS[form.name] = form
    return form


def form_of(packed: Any) -> Form:
    """The first registered form that stores ``packed``'s kind (its ``"form"`` key)."""
    if not isinstance(packed, Mapping):
        raise TskFormatError(f"A packed weight must be a dict. Got {type(packed).__name__}.")
    kind = packed.get("form")
    for form in FORMS.values():
        if form.packs is not None and form.packs == kind:
            return form
    kinds = sorted({f.packs for f in FORMS.values() if f.packs})
    raise TskFormatError(f"Unknown packed form {kind!r}; expected one of {kinds}.")


def unpack(packed: Mapping[str, Any]) -> np.ndarray:
    """The float32 effective weight of a packed value (its form's reference decode)."""
    return form_of(packed).unpack(packed)


__all__ = ["FORMS", "Form", "Plain", "form_of", "register", "unpack"]
