"""Weight transforms: the parametrizations every technique is built from.

A weight transform is a ``torch.nn.utils.parametrize`` parametrization: an ``nn.Module``
whose ``forward(w)`` returns the effective weight that training, evaluation and export
all see. Fixed state (masks, assignments, scales) lives in buffers, trainable state (a
codebook, TTQ's scales) in parameters, so optimizers, ``state_dict`` and DDP keep working.

This module holds the small amount of plumbing shared by all techniques: attaching a
transform, finding transforms again, the effective (plain) state dict, and baking the
transforms into ordinary weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .select import unwrap


class WeightTransform(nn.Module):
    """Base class for torchshrink parametrizations.

    Subclasses implement ``forward(w_in) -> effective weight``; they must not change the
    shape of the weight. A transform that changes how the weight is *stored* (shared
    codebooks, PQ codes, ternary codes, ...) also implements ``pack(w_in) -> dict``, the
    packed form (see :mod:`torchshrink.forms`) of exactly what its ``forward(w_in)``
    returns, where ``w_in`` is the transform's own input: the output of the transforms
    before it in the chain (so a ternary code attached after a pruning mask packs the
    masked weight, never the latent one). When several transforms of a chain can pack,
    the last one packs (:func:`packer`); transforms after it must leave its values as
    they are, which saving checks bit for bit.
    """

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class AttachedTransform:
    """Where a transform sits: layer name (as the user sees it), layer, tensor name."""

    layer_name: str
    layer: nn.Module
    tensor_name: str
    transform: WeightTransform


def attach(layer: nn.Module, transform: WeightTransform, tensor_name: str = "weight") -> WeightTransform:
    """Register ``transform`` on ``layer.<tensor_name>`` (after any already there)."""
    parametrize.register_parametrization(layer, tensor_name, transform)
    return transform


def original(layer: nn.Module, tensor_name: str = "weight") -> torch.Tensor:
    """The stored (latent) tensor under a parametrization, or the plain parameter."""
    if parametrize.is_parametrized(layer, tensor_name):
        return layer.parametrizations[tensor_name].original
    return getattr(layer, tensor_name)


def find(layer: nn.Module, cls: type[WeightTransform], tensor_name: str = "weight") -> WeightTransform | None:
    """The first transform of type ``cls`` on ``layer.<tensor_name>``, if any."""
    if not parametrize.is_parametrized(layer, tensor_name):
        return None
    for t in layer.parametrizations[tensor_name]:
        if isinstance(t, cls):
            return t
    return None


def can_pack(transform: nn.Module) -> bool:
    """True when ``transform`` has a packed stored form (a ``pack`` method)."""
    return callable(getattr(transform, "pack", None))


@torch.no_grad()
def packer(layer: nn.Module, tensor_name: str = "weight") -> tuple[WeightTransform, torch.Tensor] | None:
    """The transform that packs ``layer.<tensor_name>`` (the last one with ``pack``) and its input.

    The input is the chain's original tensor run through every transform before it.
    """
    if not parametrize.is_parametrized(layer, tensor_name):
        return None
    plist = layer.parametrizations[tensor_name]
    w, found = plist.original, None
    for t in plist:
        if can_pack(t):
            found = (t, w)
        w = t(w)
    return found


def iter_transforms(
    model: nn.Module, cls: type[WeightTransform] = WeightTransform
) -> Iterator[AttachedTransform]:
    """Every transform of type ``cls`` in ``model``, with the layer it sits on."""
    for name, layer in unwrap(model).named_modules():
        if not parametrize.is_parametrized(layer):
            continue
        for tname, plist in layer.parametrizations.items():
            for t in plist:
                if isinstance(t, cls):
                    yield AttachedTransform(name, layer, tname, t)


def _is_internal(name: str) -> bool:
    return "parametrizations" in name.split(".")


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The plain state dict a model without transforms would have, with effective values.

    Keys are the ordinary ones (``fc1.weight``), values detached effective tensors;
    transform internals (masks, latent weights, codebooks) are left out.
    """
    out: dict[str, torch.Tensor] = {}
    for name, m in unwrap(model).named_modules():
        if _is_internal(name):
            continue
        prefix = f"{name}." if name else ""
        if parametrize.is_parametrized(m):
            with torch.no_grad():
                for tname in m.parametrizations:
                    out[prefix + tname] = getattr(m, tname).detach()
        for pname, p in m._parameters.items():
            if p is not None:
                out[prefix + pname] = p.detach()
        for bname, b in m._buffers.items():
            if b is not None and bname not in m._non_persistent_buffers_set:
                out[prefix + bname] = b.detach()
    return out


def clone(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parametrized modules have classes of their own.

    ``copy.deepcopy`` shares the original's dynamically made ``Parametrized*`` class, and
    adding or removing a parametrization changes that class's properties: on a plain deep
    copy, attaching a transform to a copy's bias gives the original a ``bias`` property
    with no parametrization behind it. Copy models with transforms through this.
    """
    new = copy.deepcopy(model)
    for _, m in new.named_modules():
        if parametrize.is_parametrized(m):
            cls = type(m)
            m.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return new


def bake(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Remove every parametrization, leaving the effective weights as plain parameters."""
    model = unwrap(model)
    if not inplace:
        model = clone(model)
    for _, m in list(model.named_modules()):
        if parametrize.is_parametrized(m):
            for tname in list(m.parametrizations):
                parametrize.remove_parametrizations(m, tname, leave_parametrized=True)
    return model
