"""Biases kept float16-representable (or on an 8-bit grid) while training, so the file stores them exactly.

A 1-bit or ternary weight leaves the fp32 biases a large share of a small model's file
(LeNet-300-100 on digits: 1,640 bytes of biases against 6,275 of weight bits). The
binary and ternary stages therefore attach :class:`HalfBias` to the bias of every layer
they quantize: the forward pass uses ``round_fp16(b)`` and the gradient passes straight
through to the fp32 latent bias (as BinaryConnect's sign does, Courbariaux et al. 2015
§2.3), so fine-tuning adapts to the rounding. The effective bias is then exactly a float16
value, which the ``dense`` form stores in 16 bits without loss (what is saved is what is
loaded; the accuracy reported is that of the rounded biases).

:class:`GridBias` does the same with the 8-bit power-of-two grid of
:mod:`~torchshrink.quantize.pow2` (``k · 2^e``, ``|k| <= 127``, one ``e`` per bias
vector), which the ``dense`` form stores in 8 bits a value, exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.transform import WeightTransform, attach
from .pow2 import round_to_grid

#: Largest finite float16.
FP16_MAX = 65504.0


class HalfBias(WeightTransform):
    """``b ↦ round_fp16(clamp(b, ±65504))`` forward, identity gradient (straight-through)."""

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        rounded = b.detach().clamp(-FP16_MAX, FP16_MAX).to(torch.float16).to(b.dtype)
        return rounded + (b - b.detach())


class GridBias(WeightTransform):
    """``b ↦ k · 2^e`` (8-bit signed ``k``, :mod:`~torchshrink.quantize.pow2`) forward, straight-through gradient."""

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        return round_to_grid(b, 8, signed=True)


def half_biases(layers: list[nn.Module], bits: int = 16) -> int:
    """Attach :class:`HalfBias` (``bits`` 16) or :class:`GridBias` (8) to each float32 bias; return how many."""
    if bits not in (8, 16):
        raise ValueError(f"bias bits must be 8 or 16, got {bits}")
    count = 0
    for layer in layers:
        bias = getattr(layer, "bias", None)
        if isinstance(bias, torch.Tensor) and bias.dtype == torch.float32:
            attach(layer, HalfBias() if bits == 16 else GridBias(), "bias")
            count += 1
    return count
