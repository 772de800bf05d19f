"""Power-of-two grids: values ``k · 2^e`` with integer ``k`` of a few bits, exact in float32.

Small float vectors of a 1-bit network (biases, BWN's per-channel α) are a large share
of a small model's file: on LeNet-300-100 over digits, 820 bytes of fp16 biases and 820
of fp16 α against 6,275 bytes of weight bits. Trained on a per-vector grid ``k · 2^e``
(``|k| <= 127`` signed, ``k <= 255`` unsigned; ``e`` from the vector's largest magnitude,
Jacob et al. 2018's integer-arithmetic quantization with the scale a power of two, as
fixed-point hardware uses), they store in 8 bits each plus one exponent, exactly:
multiplying and dividing by ``2^e`` is exact in binary floating point (away from
subnormals), so ``float32(k) · 2^e`` decodes bit for bit what training used.

:func:`round_to_grid` is the training side (straight-through: the forward pass sees the
grid value, the gradient reaches the latent float); :func:`grid_codes` is the storage
side, which finds the grid of a vector that lies on one (and says None otherwise).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _top(bits: int, signed: bool) -> int:
    return (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1


def grid_exponent(largest: float, bits: int, signed: bool) -> int:
    """The smallest ``e`` with ``largest / 2^e <= top`` (127 or 255 at 8 bits); 0 for a zero vector."""
    top = _top(bits, signed)
    if not largest > 0:
        return 0
    e = math.ceil(math.log2(largest / top))
    while math.ldexp(largest, -e) > top:  # log2 rounding at exact powers of two
        e += 1
    while math.ldexp(largest, -(e - 1)) <= top:
        e -= 1
    return e


def round_to_grid(x: torch.Tensor, bits: int = 8, signed: bool = True) -> torch.Tensor:
    """``x`` rounded to its ``bits``-bit power-of-two grid, with the gradient passed straight through."""
    with torch.no_grad():
        e = grid_exponent(float(x.detach().abs().max()) if x.numel() else 0.0, bits, signed)
        top = _top(bits, signed)
        k = torch.round(x.detach().float() * math.ldexp(1.0, -e)).clamp(-top if signed else 0, top)
        q = (k * math.ldexp(1.0, e)).to(x.dtype)  # exact: k has at most 8 bits, 2^e is a power of two
    return q + (x - x.detach())


def grid_codes(x: np.ndarray, bits: int = 8, signed: bool = True) -> tuple[np.ndarray, int] | None:
    """``(k, e)`` with ``x == k · 2^e`` exactly (``k`` int8 / uint8 codes), or None if ``x`` lies on no such grid.

    Signed codes are returned offset by ``2^(bits-1)`` as uint8 (0 .. 254), ready for a
    bit-packed stream; :func:`grid_values` undoes both.
    """
    x = np.asarray(x, np.float32)
    if x.size == 0 or not np.isfinite(x).all() or (not signed and (x < 0).any()):
        return None
    top = _top(bits, signed)
    e = grid_exponent(float(np.abs(x).max()), bits, signed)
    k = np.ldexp(x, -e)
    if not np.array_equal(k, np.round(k)) or np.abs(k).max() > top:
        return None
    codes = _offset(k, bits, signed)
    if not np.array_equal(grid_values(codes, e, bits, signed).view(np.uint32), x.view(np.uint32)):
        return None  # -0.0, or a value the exponent cannot reach exactly (subnormals)
    return codes, e


def _offset(k: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    return (k + (1 << (bits - 1)) if signed else k).astype(np.uint8)


def grid_values(codes: np.ndarray, e: int, bits: int = 8, signed: bool = True) -> np.ndarray:
    """The float32 values ``k · 2^e`` of stored codes (see :func:`grid_codes`)."""
    k = np.asarray(codes).astype(np.int32) - ((1 << (bits - 1)) if signed else 0)
    return np.ldexp(k.astype(np.float32), e).astype(np.float32)
