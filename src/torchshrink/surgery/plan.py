"""Surgery plans: typed ops, validated from JSON, applied to a copy or replayed on load.

Every op is a frozen pydantic model with an ``op`` tag (its registry name) and an
``apply(model, init)`` that changes ``model`` in place: ``init=True`` computes the new
layers' weights from the current ones (SVD, kept channels), ``init=False`` only builds
the shapes, for a fresh model whose weights are loaded from a file afterwards (on the
``meta`` device it costs no memory, which is how :func:`torchshrink.format.load` checks
a file's shapes before building anything for real).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ..core.select import unwrap
from ..errors import ModelError


class SurgeryOp(BaseModel):
    """Base class of surgery ops; subclasses set ``op: Literal[...]`` and implement ``apply``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: str

    def apply(self, model: nn.Module, init: bool) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _ops() -> dict[str, type[SurgeryOp]]:
    from .ops import OPS

    return OPS


def parse_plan(entries: Any) -> list[SurgeryOp]:
    """Typed ops from JSON data (a list of ``{"op": ..., ...}``); errors name the step and op."""
    if not isinstance(entries, (list, tuple)):
        raise ModelError(f"A surgery plan must be a list of ops. Got {type(entries).__name__}.")
    ops = _ops()
    plan = []
    for i, entry in enumerate(entries):
        if isinstance(entry, SurgeryOp):
            plan.append(entry)
            continue
        name = entry.get("op") if isinstance(entry, dict) else None
        if name not in ops:
            raise ModelError(f"surgery step {i} has the unknown op {name!r}; known ops: {', '.join(ops)}")
        try:
            plan.append(ops[name].model_validate(entry))
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ModelError(f"surgery step {i} ({name}) is malformed: {problems}") from None
    return plan


def _record(model: nn.Module, plan: Sequence[SurgeryOp]) -> None:
    model.surgery = [*getattr(model, "surgery", []), *(op.model_dump(mode="json") for op in plan)]


def apply_plan(model: nn.Module, plan: Sequence[SurgeryOp]) -> nn.Module:
    """A new model: a copy of ``model`` with every op applied (weights computed), plan recorded."""
    new = copy.deepcopy(unwrap(model))
    for op in plan:
        op.apply(new, init=True)
    _record(new, plan)
    return new


def replay_plan(model: nn.Module, entries: Any) -> nn.Module:
    """Rebuild a recorded plan's shapes on a fresh ``model`` (in place; weights to be loaded)."""
    plan = parse_plan(entries)
    for op in plan:
        op.apply(model, init=False)
    _record(model, plan)
    return model
