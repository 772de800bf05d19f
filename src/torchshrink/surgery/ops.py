"""The surgery op registry: the only list of surgery ops (one entry per op file)."""

from __future__ import annotations

from ..factorize.svd import LowRank
from .binary_activations import OPS as BITWISE_OPS
from .plan import SurgeryOp
from .prune_channels import PruneChannels, RemoveBlock

OPS: dict[str, type[SurgeryOp]] = {op.model_fields["op"].default: op for op in (
    LowRank,
    *BITWISE_OPS,
    PruneChannels,
    RemoveBlock,
)}
