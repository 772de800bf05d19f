"""Binary activations for Bitwise Neural Networks (Kim & Smaragdis 2016), swapped in by surgery.

Modules:

* :class:`BinaryInput`: the input as ±1 values: ``sign(x − mid)`` for 1 bit (the paper's
  binarized inputs) or the ``bits`` bit-planes of a ``bits``-bit uniform quantization of
  ``[low, high]`` (plane ``i`` = bit ``i`` of the code, as ±1; features plane-major).
* :class:`SignActivation`: ``sign(x)`` (``+1`` for ``x >= 0``) with the straight-through
  gradient ``g·1{|x| <= 1}`` (the paper's stage 2 trains through the sign this way).
* :class:`OutputScale`: a fixed positive scale on the logits of the ±1 last layer.
* :class:`ThresholdSign`: the folded form of ``sign(batchnorm(z + b))`` for the integer
  dot products ``z`` of a bitwise layer: ``+1`` iff ``(z >= threshold) XOR flip``.

Ops (each a :class:`~torchshrink.surgery.plan.SurgeryOp`, recorded in the file and
replayed on load): ``output_scale`` (an :class:`OutputScale` after the last layer),
``binary_input`` (puts a :class:`BinaryInput` at a module and widens the
next Linear for bit-planes), ``sign_activation`` (replaces an activation by
:class:`SignActivation`) and ``fold_threshold`` (folds a Linear's bias, its batch norm and
sign into a :class:`ThresholdSign`: exact, thresholds found by evaluating the eval-mode
modules themselves on every reachable integer ``z``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import ModelError
from .plan import SurgeryOp


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class SignActivation(nn.Module):
    """``sign(x)`` in {−1, +1} (``+1`` at 0), straight-through gradient where ``|x| <= 1``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SignSTE.apply(x)


class BinaryInput(nn.Module):
    """The input as ±1 bit-planes of its ``bits``-bit quantization over ``[low, high]`` (features plane-major).

    ``bits = 1`` is ``sign(x − (low + high)/2)``. Output features: ``bits × in_features``.
    """

    def __init__(self, bits: int, low: float, high: float) -> None:
        super().__init__()
        if not (isinstance(bits, int) and 1 <= bits <= 8):
            raise ModelError(f"The 'input_bits' parameter of bitwise must be an int in [1, 8]. Got {bits!r}.")
        if not high > low:
            raise ModelError(f"BinaryInput needs high > low. Got low={low}, high={high}.")
        self.bits, self.low, self.high = bits, float(low), float(high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1).float()
        levels = 1 << self.bits
        q = torch.floor((x - self.low) * (levels / (self.high - self.low))).clamp_(0, levels - 1).to(torch.int64)
        planes = [((q >> i) & 1) for i in range(self.bits)]
        return torch.cat(planes, dim=1).to(torch.float32) * 2.0 - 1.0

    def extra_repr(self) -> str:
        return f"bits={self.bits}, low={self.low}, high={self.high}"


class ThresholdSign(nn.Module):
    """``+1`` where ``(z >= threshold) XOR flip``, else ``−1``: batch norm + sign of a bitwise layer, folded.

    ``threshold`` and ``flip`` (uint8) are buffers, one per output channel; a threshold
    lies in ``[−n, n + 1]`` for ``n`` inputs, so it is int16 (:func:`threshold_dtype`)
    unless ``n`` needs int32.
    """

    def __init__(self, features: int, dtype: torch.dtype = torch.int32) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.zeros(features, dtype=dtype))
        self.register_buffer("flip", torch.zeros(features, dtype=torch.uint8))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        on = (z >= self.threshold.to(z.dtype)) != self.flip.bool()
        return torch.where(on, 1.0, -1.0).to(z.dtype)

    def extra_repr(self) -> str:
        return f"features={self.threshold.numel()}"


class OutputScale(nn.Module):
    """``alpha · x``: a fixed positive scale on the logits of a network whose last layer is ±1.

    With ±1 weights and inputs the logits are integers up to ``± in_features``, far
    beyond the scale cross-entropy trains well at; ``alpha`` (a buffer) is XNOR-Net's
    weight scale ``mean |w|`` of the real-valued layer it replaces (Rastegari et al. 2016,
    eq. 3), so stage 2 starts with stage 1's logits. A positive scale changes no prediction.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.alpha.to(x.dtype)


def _module_at(model: nn.Module, name: str, kinds: tuple[type, ...], op: str) -> nn.Module:
    try:
        m = model.get_submodule(name)
    except AttributeError:
        raise ModelError(f"surgery plan names layer {name!r}, which the model does not have") from None
    if not name or not isinstance(m, kinds):
        want = " or ".join(k.__name__ for k in kinds)
        raise ModelError(f"{op} needs {want} at {name!r}; found {type(m).__name__}")
    return m


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


class BinaryInputOp(SurgeryOp):
    """Put a :class:`BinaryInput` at ``layer`` (an identity); for ``bits > 1`` widen the Linear ``next``.

    With weights computed (``init``), the widened layer gives plane ``i`` the weights
    ``W·step·2^(i−1)`` and its bias gains ``mid·ΣW``, so it approximates the original layer on
    the quantized input (``step = (high − low)/2^bits``); for 1 bit the same rule rescales ``W``.
    """

    op: Literal["binary_input"] = "binary_input"
    layer: str
    next: str
    bits: int = Field(ge=1, le=8)
    low: float
    high: float

    def apply(self, model: nn.Module, init: bool) -> None:
        _module_at(model, self.layer, (nn.Identity, nn.Flatten), "binary_input")
        fc = _module_at(model, self.next, (nn.Linear,), "binary_input")
        _replace(model, self.layer, BinaryInput(self.bits, self.low, self.high))
        new = nn.Linear(fc.in_features * self.bits, fc.out_features, bias=fc.bias is not None,
                        device=fc.weight.device, dtype=fc.weight.dtype)
        if init:
            with torch.no_grad():
                w = fc.weight.detach()
                step = (self.high - self.low) / (1 << self.bits)
                new.weight.copy_(torch.cat([w * step * 2.0 ** (i - 1) for i in range(self.bits)], dim=1))
                if fc.bias is not None:
                    new.bias.copy_(fc.bias.detach() + (self.low + step * 2 ** (self.bits - 1)) * w.sum(1))
        _replace(model, self.next, new)


class SignActivationOp(SurgeryOp):
    """Replace the activation at ``layer`` (tanh, hardtanh, ReLU, identity) by :class:`SignActivation`."""

    op: Literal["sign_activation"] = "sign_activation"
    layer: str

    def apply(self, model: nn.Module, init: bool) -> None:
        _module_at(model, self.layer, ACTIVATIONS, "sign_activation")
        _replace(model, self.layer, SignActivation())


class OutputScaleOp(SurgeryOp):
    """Add an :class:`OutputScale` named ``name`` after ``layer``, the model's last child (a Linear).

    The model must run its children in order (as :class:`~torchshrink.models.mlp.MLP`
    does), so a child added last runs last. ``alpha`` is the scale (its buffer is in the file).
    """

    op: Literal["output_scale"] = "output_scale"
    layer: str
    name: str = "out_scale"
    alpha: float = Field(1.0, gt=0)

    def apply(self, model: nn.Module, init: bool) -> None:
        _module_at(model, self.layer, (nn.Linear,), "output_scale")
        children = list(model.named_children())
        if not children or children[-1][0] != self.layer or "." in self.name or hasattr(model, self.name):
            raise ModelError(f"output_scale needs {self.layer!r} to be the model's last child and {self.name!r} "
                             "a new top-level name")
        model.add_module(self.name, OutputScale(self.alpha))


ACTIVATIONS = (nn.Tanh, nn.Hardtanh, nn.ReLU, nn.Identity, SignActivation)


def threshold_dtype(in_features: int) -> torch.dtype:
    """The narrowest of int16 / int32 holding every threshold of a layer with ``in_features`` inputs."""
    return torch.int16 if in_features + 1 <= torch.iinfo(torch.int16).max else torch.int32


@torch.no_grad()
def fold_thresholds(linear: nn.Linear, norm: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(threshold int32, flip uint8) with ``sign(norm(z + bias)) = +1 iff (z >= t) XOR flip`` for integer ``z``.

    ``z`` ranges over ``[−in, in]`` (a ±1 dot product of ``in`` terms); each candidate is run
    through the layer's own bias add and the eval-mode ``norm``, so the fold reproduces the
    unfolded model's float arithmetic exactly. Float rounding is monotone, so the ``+1`` set
    is an up-set (``flip = 0``) or a down-set (``flip = 1``) of ``z``.
    """
    n, out = linear.in_features, linear.out_features
    z = torch.arange(-n, n + 1, dtype=torch.float32).unsqueeze(1)
    bias = linear.bias.detach().float() if linear.bias is not None else torch.zeros(out)
    full = z + bias  # (2n+1, out): the Linear's output for an integer dot product z
    if norm is not None:
        was = norm.training
        norm.eval()
        try:
            full = norm(full.to(_device(norm))).cpu()
        finally:
            norm.train(was)
    on = full >= 0
    return _thresholds(on, n)


def _device(m: nn.Module) -> torch.device:
    t = next(iter([*m.parameters(), *m.buffers()]), None)
    return t.device if t is not None else torch.device("cpu")


def _thresholds(on: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``on`` (rows: z = −n..n), the (threshold, flip) pair that reproduces it."""
    rows = on.shape[0]
    up = (on[1:] >= on[:-1]).all(0)
    down = (on[1:] <= on[:-1]).all(0)
    if not bool((up | down).all()):
        bad = int((~(up | down)).nonzero()[0, 0])
        raise ModelError(f"fold_threshold: channel {bad}'s sign(batch norm) is not monotone in the dot product")
    count_on = on.sum(0).to(torch.int64)
    # row r is z = r - n. An up-set is on from row rows - count_on: z >= rows - count_on - n (n + 1: never);
    # a down-set is on below row count_on: z < count_on - n, i.e. NOT (z >= count_on - n).
    threshold = torch.where(up, (rows - count_on) - n, count_on - n).to(torch.int32)
    flip = (~up).to(torch.uint8)
    return threshold, flip


class FoldThresholdOp(SurgeryOp):
    """Fold ``linear``'s bias, ``norm`` (batch norm, or none) and the sign at ``activation`` into a :class:`ThresholdSign`.

    Afterwards ``linear`` has no bias, ``norm`` is an identity and ``activation`` holds the
    integer thresholds; the outputs are those of the unfolded eval-mode model for ±1 inputs.
    """

    op: Literal["fold_threshold"] = "fold_threshold"
    linear: str
    norm: str | None = None
    activation: str

    def apply(self, model: nn.Module, init: bool) -> None:
        fc = _module_at(model, self.linear, (nn.Linear,), "fold_threshold")
        bn = _module_at(model, self.norm, (nn.BatchNorm1d,), "fold_threshold") if self.norm else None
        _module_at(model, self.activation, (SignActivation,), "fold_threshold")
        folded = ThresholdSign(fc.out_features, threshold_dtype(fc.in_features))
        if init:
            t, f = fold_thresholds(fc, bn)
            folded.threshold.copy_(t)
            folded.flip.copy_(f)
        fc.bias = None
        if bn is not None:
            _replace(model, self.norm, nn.Identity())
        _replace(model, self.activation, folded)


OPS = (BinaryInputOp, SignActivationOp, FoldThresholdOp, OutputScaleOp)
