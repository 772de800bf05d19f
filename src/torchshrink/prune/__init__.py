"""Pruning: magnitude (Han et al. 2015) and gradual AGP (Zhu & Gupta 2017), as masks."""

from __future__ import annotations

from .magnitude import IterativePruning, iteration_targets, magnitude, prune_layer, sparsity_mask
from .masks import Mask, mask_of, masks, set_mask
from .agp import AGP, agp_sparsity

__all__ = [
    "AGP",
    "IterativePruning",
    "Mask",
    "agp_sparsity",
    "iteration_targets",
    "magnitude",
    "mask_of",
    "masks",
    "prune_layer",
    "set_mask",
    "sparsity_mask",
]
