"""One table of parameter constraints: each constraint validates a value and describes itself.

A constraint is written once and serves both entry points: the Python API checks its
arguments with :func:`check` (scikit-learn's message style: "The 'bits' parameter of
kmeans must be an int in [1, 16]. Got 0 instead."), and a recipe Spec uses the same
object as a pydantic annotation through :meth:`Interval.field`, so the bounds of a recipe
key and of the function argument can never drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Annotated, Any

from pydantic import Field

from ..errors import ModelError


@dataclass(frozen=True)
class Interval:
    """A number of ``kind`` (``int`` or ``float``) in a range; ``None`` bounds are open-ended.

    ``closed`` is ``"both"``, ``"left"``, ``"right"`` or ``"neither"``. A float interval
    accepts ints too; an int interval refuses bools and floats.
    """

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind is int and not isinstance(value, Integral):
            return False
        if self.kind is float and not (isinstance(value, Real) and math.isfinite(float(value))):
            return False
        lo_ok = self.low is None or (value >= self.low if self.closed in ("both", "left") else value > self.low)
        hi_ok = self.high is None or (value <= self.high if self.closed in ("both", "right") else value < self.high)
        return bool(lo_ok and hi_ok)

    def convert(self, value: Any) -> Any:
        return int(value) if self.kind is int else float(value)

    def describe(self) -> str:
        article = "an int" if self.kind is int else "a float"
        if self.low is not None and self.high is not None:
            left = "[" if self.closed in ("both", "left") else "("
            right = "]" if self.closed in ("both", "right") else ")"
            return f"{article} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{article} {'>=' if self.closed in ('both', 'left') else '>'} {_num(self.low)}"
        if self.high is not None:
            return f"{article} {'<=' if self.closed in ('both', 'right') else '<'} {_num(self.high)}"
        return article

    @property
    def type(self) -> Any:
        """``Annotated[kind, Field(bounds)]``: the constraint as a pydantic type (for unions, dicts)."""
        return Annotated[self.kind, self.field()]

    def field(self, default: Any = ..., **kwargs: Any) -> Any:
        """A pydantic ``Field`` with the same bounds (for recipe Specs)."""
        bounds: dict[str, Any] = {}
        if self.low is not None:
            bounds["ge" if self.closed in ("both", "left") else "gt"] = self.low
        if self.high is not None:
            bounds["le" if self.closed in ("both", "right") else "lt"] = self.high
        return Field(default, **bounds, **kwargs)


@dataclass(frozen=True)
class OneOf:
    """One of a fixed set of values (strings, usually)."""

    values: tuple[Any, ...]

    def accepts(self, value: Any) -> bool:
        return isinstance(value, type(self.values[0])) and value in self.values

    def convert(self, value: Any) -> Any:
        return value

    def describe(self) -> str:
        return f"one of {list(self.values)}"


Constraint = Interval | OneOf


def check(value: Any, name: str, owner: str | None, *allowed: Constraint, error: type[Exception] = ModelError) -> Any:
    """``value`` if any constraint accepts it (converted to the constraint's kind), else ``error``."""
    for c in allowed:
        if c.accepts(value):
            return c.convert(value)
    where = f"The '{name}' parameter" + (f" of {owner}" if owner else "")
    raise error(f"{where} must be {' or '.join(c.describe() for c in allowed)}. Got {value!r} instead.")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# The constraints several techniques share.
FRACTION = Interval(float, 0.0, 1.0, "left")
BITS = Interval(int, 1, 16)
POSITIVE_INT = Interval(int, 1, None)
NON_NEGATIVE_INT = Interval(int, 0, None)
