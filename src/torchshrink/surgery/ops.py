"""The surgery op registry: the only list of surgery ops (one entry per op file)."""

from __future__ import annotations

from ..factorize.svd import LowRank
from .plan import SurgeryOp
from .prune_channels import PruneChannels, RemoveBlock

OPS: dict[str, type[SurgeryOp]] = {op.model_fields["op"].default: op for op in (LowRank, PruneChannels, RemoveBlock)}
