"""Binary pruning masks as parametrizations.

A pruned layer carries a :class:`Mask` on its weight: the effective weight is
``original * mask``, so the gradient reaching a pruned entry is exactly zero and the
forward pass of training, evaluation and export all see the same zeros. When a mask is
set, the pruned entries of the latent weight are zeroed too; with zero gradient, weight
decay (``λw = 0``) and momentum (zero history) they then stay zero through training.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from ..core.transform import WeightTransform, attach, find, iter_transforms, original


class Mask(WeightTransform):
    """``w ↦ w ⊙ m`` with a fixed binary mask ``m`` stored as a buffer (1 = kept)."""

    def __init__(self, shape: torch.Size | tuple[int, ...], dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=dtype))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask

    @property
    def kept(self) -> int:
        """Number of kept (unmasked) entries."""
        return int(self.mask.count_nonzero())

    @property
    def sparsity(self) -> float:
        """Fraction of masked entries."""
        return 1.0 - self.kept / self.mask.numel()


def ensure_mask(layer: nn.Module, tensor_name: str = "weight") -> Mask:
    """The layer's mask, attaching an all-ones mask first if it has none (idempotent)."""
    existing = find(layer, Mask, tensor_name)
    if existing is not None:
        return existing
    w = original(layer, tensor_name)
    return attach(layer, Mask(w.shape, dtype=w.dtype).to(w.device), tensor_name)


def mask_of(layer: nn.Module, tensor_name: str = "weight") -> Mask | None:
    """The layer's mask, or None when it is not pruned."""
    return find(layer, Mask, tensor_name)


@torch.no_grad()
def set_mask(layer: nn.Module, keep: torch.Tensor, tensor_name: str = "weight") -> Mask:
    """Set the layer's mask to ``keep`` (bool or 0/1) and zero the pruned latent entries."""
    m = ensure_mask(layer, tensor_name)
    if keep.shape != m.mask.shape:
        raise ModelError(
            f"mask shape {tuple(keep.shape)} does not match weight shape {tuple(m.mask.shape)}"
        )
    m.mask.copy_(keep.to(m.mask.dtype))
    original(layer, tensor_name).mul_(m.mask)
    return m


def masks(model: nn.Module) -> dict[str, Mask]:
    """All masks in ``model`` keyed by ``layer.tensor`` name (as the user sees it)."""
    return {f"{a.layer_name}.{a.tensor_name}": a.transform for a in iter_transforms(model, Mask)}


def broadcast_masks(model: nn.Module, src: int = 0) -> None:
    """Make every rank's masks equal to rank ``src``'s (no-op outside torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for m in masks(model).values():
        torch.distributed.broadcast(m.mask, src)
