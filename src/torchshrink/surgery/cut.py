"""Cut channels out of one layer: keep the listed output, input or per-channel indices.

The per-layer-type half of structured pruning (Li et al. 2017 §3.2: "remove the filter,
its feature map, and the corresponding kernels in the next layer"): given the indices to
*keep*, each function replaces the layer's parameters and buffers by the kept slices and
updates its size attributes, in place. Which indices go where is the dependency graph's
job (:mod:`torchshrink.surgery.graph`); these functions only slice, so a graph and a cut
can be tested apart. They run the same on the ``meta`` device (shapes only), which is how a
``.tsk`` file's plan is replayed on load.

- ``cut_out``: output channels/features of Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear,
  Embedding (its ``embedding_dim``).
- ``cut_in``: input channels/features of the same conv types and Linear.
- ``cut_channels``: layers whose channel count is both in and out: BatchNorm*,
  InstanceNorm*, LayerNorm (1-d ``normalized_shape``), GroupNorm, PReLU, and depthwise or
  grouped convolutions (``groups`` shrinks for depthwise; for grouped convs the same count
  must be kept in each group, so ``in/groups`` shrinks and ``groups`` stays).
- ``cut_param``: any parameter or buffer, along one axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError
from .graph import CONV, CONV_T, NORM


def _index(keep: Sequence[int], size: int, what: str) -> torch.Tensor:
    idx = [int(i) for i in keep]
    if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= size or idx != sorted(idx):
        raise ModelError(f"{what}: keep must be distinct sorted indices in [0, {size}), at least one; "
                         f"got {len(idx)} indices" + (f" from {min(idx)} to {max(idx)}" if idx else ""))
    return torch.tensor(idx, dtype=torch.long)


def _slice(owner: nn.Module, name: str, dim: int, idx: torch.Tensor) -> None:
    """Replace ``owner.<name>`` by its slice ``index_select(dim, idx)`` (parameter stays a parameter)."""
    t = getattr(owner, name)
    if t is None:
        return
    new = t.detach().index_select(dim, idx.to(t.device)).clone()
    if isinstance(t, nn.Parameter):
        setattr(owner, name, nn.Parameter(new, requires_grad=t.requires_grad))
    else:
        owner._buffers[name] = new


def _check_conv(layer: nn.Module, what: str) -> None:
    if getattr(layer, "padding_mode", "zeros") != "zeros" and isinstance(layer, CONV_T):
        raise ModelError(f"{what}: transposed conv with padding_mode {layer.padding_mode!r} is not supported")


def cut_out(layer: nn.Module, keep: Sequence[int], name: str = "layer") -> None:
    """Keep the output channels ``keep`` of ``layer`` (in place)."""
    if isinstance(layer, CONV):
        if layer.groups != 1:
            raise ModelError(f"{name}: a grouped conv's output channels are cut with cut_channels")
        idx = _index(keep, layer.out_channels, f"cut_out({name})")
        _slice(layer, "weight", 0, idx)
        _slice(layer, "bias", 0, idx)
        layer.out_channels = len(idx)
    elif isinstance(layer, CONV_T):
        _check_conv(layer, name)
        if layer.groups != 1:
            raise ModelError(f"{name}: grouped transposed convs are not cut")
        idx = _index(keep, layer.out_channels, f"cut_out({name})")
        _slice(layer, "weight", 1, idx)
        _slice(layer, "bias", 0, idx)
        layer.out_channels = len(idx)
    elif isinstance(layer, nn.Linear):
        idx = _index(keep, layer.out_features, f"cut_out({name})")
        _slice(layer, "weight", 0, idx)
        _slice(layer, "bias", 0, idx)
        layer.out_features = len(idx)
    elif isinstance(layer, nn.Embedding):
        idx = _index(keep, layer.embedding_dim, f"cut_out({name})")
        _slice(layer, "weight", 1, idx)
        layer.embedding_dim = len(idx)
    else:
        raise ModelError(f"{name}: cannot cut the output channels of {type(layer).__name__}")


def cut_in(layer: nn.Module, keep: Sequence[int], name: str = "layer") -> None:
    """Keep the input channels (features) ``keep`` of ``layer`` (in place)."""
    if isinstance(layer, CONV):
        if layer.groups != 1:
            raise ModelError(f"{name}: a grouped conv's input channels are cut with cut_channels")
        idx = _index(keep, layer.in_channels, f"cut_in({name})")
        _slice(layer, "weight", 1, idx)
        layer.in_channels = len(idx)
    elif isinstance(layer, CONV_T):
        _check_conv(layer, name)
        if layer.groups != 1:
            raise ModelError(f"{name}: grouped transposed convs are not cut")
        idx = _index(keep, layer.in_channels, f"cut_in({name})")
        _slice(layer, "weight", 0, idx)
        layer.in_channels = len(idx)
    elif isinstance(layer, nn.Linear):
        idx = _index(keep, layer.in_features, f"cut_in({name})")
        _slice(layer, "weight", 1, idx)
        layer.in_features = len(idx)
    else:
        raise ModelError(f"{name}: cannot cut the input channels of {type(layer).__name__}")


def cut_channels(layer: nn.Module, keep: Sequence[int], name: str = "layer") -> None:
    """Keep channels ``keep`` of a layer whose input and output channels are the same (in place)."""
    if isinstance(layer, NORM):
        idx = _index(keep, layer.num_features, f"cut_channels({name})")
        for t in ("weight", "bias", "running_mean", "running_var"):
            _slice(layer, t, 0, idx)
        layer.num_features = len(idx)
    elif isinstance(layer, nn.LayerNorm):
        if len(layer.normalized_shape) != 1:
            raise ModelError(f"{name}: LayerNorm over {len(layer.normalized_shape)} dims is not cut")
        idx = _index(keep, layer.normalized_shape[0], f"cut_channels({name})")
        _slice(layer, "weight", 0, idx)
        _slice(layer, "bias", 0, idx)
        layer.normalized_shape = (len(idx),)
    elif isinstance(layer, nn.GroupNorm):
        idx = _index(keep, layer.num_channels, f"cut_channels({name})")
        _check_balanced(idx, layer.num_channels, layer.num_groups, name)
        _slice(layer, "weight", 0, idx)
        _slice(layer, "bias", 0, idx)
        layer.num_channels = len(idx)
    elif isinstance(layer, nn.PReLU):
        idx = _index(keep, layer.num_parameters, f"cut_channels({name})")
        _slice(layer, "weight", 0, idx)
        layer.num_parameters = len(idx)
    elif isinstance(layer, CONV) and layer.groups > 1 and layer.in_channels == layer.out_channels:
        c, g = layer.out_channels, layer.groups
        idx = _index(keep, c, f"cut_channels({name})")
        per = c // g
        if per == 1:  # depthwise: whole groups go
            _slice(layer, "weight", 0, idx)
            layer.groups = len(idx)
        else:  # grouped: the same count kept in each group; row o keeps the kept inputs of its group
            _check_balanced(idx, c, g, name)
            w = layer.weight.detach()
            local = (idx % per).reshape(g, -1)
            rows = w.index_select(0, idx.to(w.device))
            cols = local[idx // per]  # for each kept row, the kept local inputs of its group
            new = torch.gather(rows, 1, cols.to(w.device).reshape(*cols.shape, *([1] * (w.ndim - 2)))
                               .expand(-1, -1, *w.shape[2:]))
            layer.weight = nn.Parameter(new.clone(), requires_grad=layer.weight.requires_grad)
        _slice(layer, "bias", 0, idx)
        layer.in_channels = layer.out_channels = len(idx)
    else:
        raise ModelError(f"{name}: cannot cut the channels of {type(layer).__name__}")


def _check_balanced(idx: torch.Tensor, size: int, groups: int, name: str) -> None:
    counts = torch.bincount(idx // (size // groups), minlength=groups)
    if not bool((counts == counts[0]).all()):
        raise ModelError(f"{name}: each of its {groups} groups must keep the same number of channels; "
                         f"kept {counts.tolist()}")


def cut_param(model: nn.Module, name: str, axis: int, keep: Sequence[int]) -> None:
    """Keep indices ``keep`` of the parameter or buffer ``name`` of ``model`` along ``axis`` (in place)."""
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name) if owner_name else model
        t = getattr(owner, attr)
    except AttributeError:
        raise ModelError(f"surgery plan names the tensor {name!r}, which the model does not have") from None
    if not isinstance(t, torch.Tensor) or not 0 <= axis < t.ndim:
        raise ModelError(f"{name}: cannot cut axis {axis} of {type(t).__name__}")
    _slice(owner, attr, axis, _index(keep, t.shape[axis], f"cut_param({name})"))
