"""The surgery op of structured pruning: remove channels from every layer that indexes them.

A :class:`PruneChannels` op is pure data: per target (a layer or a bare parameter), the
role of the cut and the indices to keep. It is made by
:func:`prune_channels_op` from a :class:`~torchshrink.surgery.graph.DependencyGraph` and the
atoms to remove (Li et al.'s smallest filters, SSL's zeroed groups); it is stored in the
``.tsk`` file's plan (JSON ``{"op": "prune_channels", "cuts": [...]}``) and replayed on load
(shapes only, on the ``meta`` device first), so the slimmed model is rebuilt without any
user code. :class:`RemoveBlock` (SSL's depth groups) replaces a residual block by its
shortcut.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..errors import ModelError
from .cut import cut_channels, cut_in, cut_out, cut_param
from .graph import DependencyGraph
from .plan import SurgeryOp


class ChannelCut(BaseModel):
    """Keep ``keep`` along ``role`` of ``target`` (see :class:`~torchshrink.surgery.graph.Use`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str
    role: Literal["out", "in", "channel", "param"]
    axis: int = Field(0, ge=0)
    keep: list[int] = Field(min_length=1)


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"surgery plan names layer {name!r}, which the model does not have") from None


class PruneChannels(SurgeryOp):
    """Surgery op: cut every listed layer and parameter down to its kept channels (in place)."""

    op: Literal["prune_channels"] = "prune_channels"
    cuts: list[ChannelCut]

    def apply(self, model: nn.Module, init: bool) -> None:
        for c in self.cuts:
            if c.role == "param":
                cut_param(model, c.target, c.axis, c.keep)
                continue
            layer = _module(model, c.target)
            {"out": cut_out, "in": cut_in, "channel": cut_channels}[c.role](layer, c.keep, c.target)


class RemoveBlock(SurgeryOp):
    """Surgery op: replace the block at ``block`` by its child ``shortcut`` (or an identity).

    SSL's depth regularization (Wen et al. 2016 §3.3) drives a whole residual branch to
    zero; the block then computes ``relu(shortcut(x))``, which equals ``shortcut(x)`` for
    the non-negative inputs of a post-ReLU residual stream and a parameter-free shortcut.
    """

    op: Literal["remove_block"] = "remove_block"
    block: str = Field(min_length=1)
    shortcut: str | None = None

    def apply(self, model: nn.Module, init: bool) -> None:
        block = _module(model, self.block)
        new = nn.Identity() if self.shortcut is None else _module(block, self.shortcut)
        parent_name, _, child = self.block.rpartition(".")
        parent = _module(model, parent_name) if parent_name else model
        setattr(parent, child, new)


def prune_channels_op(graph: DependencyGraph, removed: Iterable[int]) -> PruneChannels:
    """The :class:`PruneChannels` op that removes the atoms ``removed`` of ``graph``."""
    return PruneChannels(cuts=[ChannelCut(**c) for c in graph.cuts(removed)])
