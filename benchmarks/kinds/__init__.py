"""The benchmark kinds of ``benchmarks/kernels.py``: one module per kind, one entry here.

A kind module has ``KIND`` (its name, the rows' ``kind``), ``rows(args, gen) -> list[dict]``
(``args`` carries ``shapes`` (None: the kind's own), ``input_density``, ``rounds``,
``repeats``, ``quick``) and ``print_rows(rows)``.
"""

from __future__ import annotations

from types import ModuleType

from . import binary, bitwise_mlp, pq, sparse, ternary, tt, xnor, xnor_conv

KINDS: dict[str, ModuleType] = {m.KIND: m for m in (
    sparse,
    pq,
    ternary,
    binary,
    xnor,
    xnor_conv,
    bitwise_mlp,
    tt,
)}
