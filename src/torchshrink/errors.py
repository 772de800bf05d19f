"""Errors that torchshrink raises for bad input.

Every error a user can cause (a bad recipe, missing data, a malformed file, a shape
mismatch) is a :class:`TorchshrinkError`; the CLI prints its message on one line and
exits non-zero, so messages must name the problem and, where possible, the fix.
"""

from __future__ import annotations


class TorchshrinkError(Exception):
    """Base class of every user-facing torchshrink error."""


class RecipeError(TorchshrinkError, ValueError):
    """A recipe is malformed: an unknown key, a bad value, an unknown technique."""


class DataError(TorchshrinkError, FileNotFoundError):
    """A data set is missing, incomplete or malformed."""


class ModelError(TorchshrinkError, ValueError):
    """A model name, argument or layer selection is invalid."""


class CheckpointError(TorchshrinkError, ValueError):
    """A training checkpoint cannot be read or does not match the run."""


class TrainingError(TorchshrinkError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or infinite)."""


class TskFormatError(TorchshrinkError, ValueError):
    """A compressed payload or file (bytes or metadata) is malformed, or a codec argument is bad."""
