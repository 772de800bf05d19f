"""Bitwise Neural Networks (Kim & Smaragdis 2016): ±1 weights, inputs and activations.

The paper trains in two stages (its §3):

1. ``stage: real`` -- a real-valued network whose weights are squashed by tanh,
   ``w = tanh(w̄)`` (its "weight compression"), trained on binarized inputs. Here the
   input becomes :class:`~torchshrink.surgery.binary_activations.BinaryInput` (1 bit:
   ``sign(x − mid)``; ``input_bits = k``: the bit-planes of a k-bit quantization) and every
   selected Linear gets :class:`TanhSquash`, with the latent weight initialized to
   ``atanh(w)`` so the network starts where it was.
2. ``stage: binary`` -- starting from it, weights become ``sign(tanh(w̄))`` (:class:`BinarySign`;
   0 where ``|tanh(w̄)| < sparsity``, the paper's optional sparsity threshold β) and the
   activations ``sign`` (:class:`~torchshrink.surgery.binary_activations.SignActivation`),
   trained through straight-through gradients (the paper's noisy backpropagation: the
   loss is that of the bitwise network, the updates go to the real-valued ``w̄``).
   With ``output_scale`` (default) the last layer's integer logits are scaled by
   ``alpha = mean |tanh w̄|`` (:class:`~torchshrink.surgery.binary_activations.OutputScale`,
   XNOR-Net's weight scale), so stage 2 starts from stage 1's logits instead of ones
   ``1/alpha`` times larger, where cross-entropy's gradients saturate.

A third stage, ``stage: fold``, trains nothing: each hidden Linear's bias, batch norm and
sign become integer thresholds (:class:`~torchshrink.surgery.binary_activations.ThresholdSign`),
so inference is XNOR–popcount from layer to layer, x·w = 2·popcount(xnor(x, w)) − n
(:mod:`torchshrink.runtime.xnor`). Unlike the paper, biases stay real-valued until then:
the fold absorbs them into the thresholds, and the last layer keeps a float bias.

Storage: each bitwise weight is the ``bitwise`` form, 1 bit per weight (plus 1 mask bit
where ``sparsity > 0``); thresholds are int16 tensors (int32 past 32,766 inputs).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import parametrize

from ..core.params import Interval, check
from ..core.select import select_layers, unwrap
from ..core.technique import LayerStage, Step, Technique
from ..core.transform import WeightTransform, attach, find, original
from ..errors import ModelError, RecipeError
from ..surgery.binary_activations import (ACTIVATIONS, BinaryInput, BinaryInputOp, FoldThresholdOp, OutputScaleOp,
                                          SignActivation, SignActivationOp)
from ..surgery.plan import apply_plan

INPUT_BITS = Interval(int, 1, 8)
SPARSITY = Interval(float, 0.0, 1.0, "left")
_ATANH_CLAMP = 1.0 - 1e-6


class TanhSquash(WeightTransform):
    """``w = tanh(w̄)``: stage 1's weight compression (Kim & Smaragdis 2016 §3.1); stored as a plain weight."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.tanh(w)


class _BinarySTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, beta: float) -> torch.Tensor:
        t = torch.tanh(w)
        ctx.save_for_backward(t)
        q = torch.where(t >= 0, 1.0, -1.0).to(w.dtype)
        return q * (t.abs() >= beta).to(w.dtype) if beta > 0 else q

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (t,) = ctx.saved_tensors
        return grad * (1 - t * t), None  # straight through the sign, then through tanh


class BinarySign(WeightTransform):
    """``w = sign(tanh(w̄))`` in {−1, +1} (``+1`` at 0), or 0 where ``|tanh(w̄)| < sparsity`` (stage 2).

    The gradient passes straight through the sign to ``tanh(w̄)`` (Kim & Smaragdis 2016 §3.2).
    ``pack`` gives the ``bitwise`` packed kind: sign bits, and mask bits when ``sparsity > 0``.
    """

    def __init__(self, sparsity: float = 0.0) -> None:
        super().__init__()
        self.sparsity = check(sparsity, "sparsity", "bitwise", SPARSITY)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _BinarySTE.apply(w, self.sparsity)

    def pack(self, w_in: torch.Tensor) -> dict[str, Any]:
        t = torch.tanh(w_in.detach()).cpu()
        packed = {"form": "bitwise", "shape": list(t.shape), "signs": (t >= 0).numpy().astype(np.uint8)}
        if self.sparsity > 0:
            packed["mask"] = (t.abs() >= self.sparsity).numpy().astype(np.uint8)
        return packed

    def extra_repr(self) -> str:
        return f"sparsity={self.sparsity}"


# ---------------------------------------------------------------- the recipe stage
class BitwiseSpec(LayerStage):
    """One stage of Bitwise NN training: ``real`` (tanh-squashed weights, binarized inputs),
    ``binary`` (sign weights and activations, straight-through) or ``fold`` (integer thresholds)."""

    technique: Literal["bitwise"]
    stage: Literal["real", "binary", "fold"] = Field(..., description="real | binary | fold")
    layers: list[str] = Field(default_factory=lambda: ["*"], description="Linear layer name patterns")
    input: str = Field("inp", description="module (an identity) replaced by the input binarizer (stage real)")
    input_bits: int = INPUT_BITS.field(1, description="1: sign of the input; k: its k bit-planes (stage real)")
    sparsity: float = SPARSITY.field(0.0, description="β: weights with |tanh w| < β become 0 (stage binary)")
    activations: list[str] = Field(default_factory=lambda: ["*"],
                                   description="activation name patterns made sign (stage binary)")
    output_scale: bool = Field(True, description="scale the ±1 last layer's logits by mean |tanh w| (stage binary)")
    norm_stats: bool = Field(False, description="recompute the batch norms' statistics on the training set "
                                                "before folding (stage fold)")


def _linears(model: nn.Module, spec: BitwiseSpec) -> list[tuple[str, nn.Module]]:
    chosen = select_layers(model, spec.layers, spec.exclude, types=(nn.Linear,))
    if not chosen:
        raise RecipeError("bitwise: 'layers' selects no nn.Linear layer")
    return chosen


def _input_range(ctx: Any) -> tuple[float, float]:
    x = ctx.data.train.tensors[0]
    return float(x.min()), float(x.max())


def binarize_input(model: nn.Module, low: float, high: float, bits: int = 1, input: str = "inp") -> nn.Module:
    """A copy of ``model`` whose module ``input`` is a :class:`BinaryInput` (the first Linear widened for bit-planes)."""
    check(bits, "input_bits", "bitwise", INPUT_BITS)
    first = next((n for n, m in unwrap(model).named_modules() if isinstance(m, nn.Linear)), None)
    if first is None:
        raise ModelError("bitwise needs a model with an nn.Linear layer")
    return apply_plan(model, [BinaryInputOp(layer=input, next=first, bits=bits, low=low, high=high)])


def squash(layer: nn.Module) -> TanhSquash:
    """Attach :class:`TanhSquash` to ``layer`` with latent ``atanh(w)`` (the effective weight is kept)."""
    with torch.no_grad():
        w = layer.weight.detach().clamp(-_ATANH_CLAMP, _ATANH_CLAMP)
    t = attach(layer, TanhSquash())
    with torch.no_grad():
        original(layer).copy_(torch.atanh(w))
    return t


def binarize(layer: nn.Module, sparsity: float = 0.0) -> BinarySign:
    """Replace ``layer``'s :class:`TanhSquash` (if any) by :class:`BinarySign` on the same latent weight.

    Without a squash, the latent weight is ``atanh(w)`` so that ``tanh`` of it is ``w``.
    """
    if find(layer, TanhSquash) is not None:
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    elif parametrize.is_parametrized(layer, "weight"):
        raise ModelError("bitwise: the layer already has other weight transforms; binarize a plain or squashed layer")
    else:
        with torch.no_grad():
            layer.weight.copy_(torch.atanh(layer.weight.clamp(-_ATANH_CLAMP, _ATANH_CLAMP)))
    return attach(layer, BinarySign(sparsity))


def sign_activation_plan(model: nn.Module, patterns: list[str] | None = None,
                         exclude: list[str] | None = None) -> list[SignActivationOp]:
    """:class:`SignActivationOp` for every tanh / hardtanh / ReLU activation matching ``patterns``."""
    acts = select_layers(model, patterns, exclude, types=(nn.Tanh, nn.Hardtanh, nn.ReLU))
    return [SignActivationOp(layer=n) for n, _ in acts]


def output_scale_op(model: nn.Module, chosen: dict[str, nn.Module]) -> OutputScaleOp | None:
    """:class:`OutputScaleOp` with ``alpha = mean |w|`` of the model's last child, if it is a chosen Linear; else None.

    Run before :func:`binarize`: ``w`` is then the real-valued (tanh-squashed) weight.
    """
    children = list(unwrap(model).named_children())
    if not children or children[-1][0] not in chosen or not isinstance(children[-1][1], nn.Linear):
        return None
    name, last = children[-1]
    with torch.no_grad():
        alpha = float(last.weight.detach().abs().mean())
    return OutputScaleOp(layer=name, alpha=alpha) if alpha > 0 else None


@torch.no_grad()
def recompute_norm_stats(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> None:
    """Set every batch norm's running mean and variance to its average over ``inputs`` (weights unchanged).

    The running statistics of stage 2 are an exponential average over the last steps,
    whose sign flips move the pre-activations, so the folded thresholds would inherit
    that noise (test accuracy jumps by points from one epoch to the next); a pass over
    the training set in train mode with cumulative averaging (``momentum=None``) gives
    the statistics of the final weights (as BN re-estimation in Ioffe & Szegedy 2015, §3.1).
    """
    norms = [m for m in unwrap(model).modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was, momenta = model.training, [m.momentum for m in norms]
    device = next(iter(model.parameters())).device
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for i in range(0, len(inputs), batch_size):
            model(inputs[i : i + batch_size].to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was)


def fold_plan(model: nn.Module) -> list[FoldThresholdOp]:
    """:class:`FoldThresholdOp` for each Linear followed (in module order) by an optional batch norm and a sign."""
    plan, pending, norm = [], None, None
    for name, m in unwrap(model).named_modules():
        if isinstance(m, nn.Linear):
            pending, norm = name, None
        elif isinstance(m, nn.BatchNorm1d) and pending is not None:
            norm = name
        elif isinstance(m, SignActivation) and pending is not None:
            plan.append(FoldThresholdOp(linear=pending, norm=norm, activation=name))
            pending, norm = None, None
        elif isinstance(m, ACTIVATIONS) and not isinstance(m, nn.Identity):
            pending, norm = None, None
    if not plan:
        raise ModelError("bitwise fold found no Linear → (batch norm) → sign chain; run stage 'binary' first")
    return plan


def _apply(ctx: Any, spec: BitwiseSpec, finetune: Any) -> Step:
    if spec.stage == "real":
        low, high = _input_range(ctx)
        if not any(isinstance(m, BinaryInput) for m in unwrap(ctx.model).modules()):
            ctx.model = binarize_input(ctx.model, low, high, spec.input_bits, spec.input)
        for _, layer in _linears(ctx.model, spec):
            squash(layer)
        return Step()
    if spec.stage == "binary":
        chosen = _linears(ctx.model, spec)
        plan: list[Any] = [output_scale_op(ctx.model, dict(chosen))] if spec.output_scale else []
        for _, layer in chosen:
            binarize(layer, spec.sparsity)
        return Step(plan=[op for op in plan if op is not None] + sign_activation_plan(ctx.model, spec.activations))
    if spec.norm_stats:
        recompute_norm_stats(ctx.model, ctx.data.train.tensors[0])
    return Step(plan=fold_plan(ctx.model), finetune=False)


TECHNIQUE = Technique("bitwise", BitwiseSpec, _apply)
