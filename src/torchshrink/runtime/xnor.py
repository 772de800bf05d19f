"""XNOR–popcount inference for bitwise layers (Kim & Smaragdis 2016, "Bitwise Neural Networks").

Weights and inputs are ±1, stored as bits (1 = +1, 0 = −1) in 64-bit words, and a dot
product is ``x·w = n − 2·popcount(x XOR w)`` (the paper's eq. ``2·popcount(xnor) − n``);
an optional mask bit per weight turns it into a 0 (the paper's sparsity threshold), then
``n`` is the row's count of kept weights and the XOR is ANDed with the mask.

* :class:`XnorWeight`: a kernel weight (``matmul``/``to_dense``/``weight_bytes``) for a
  Linear layer; with ±1 inputs the result is exact (integers), so it equals the decoded
  layer's output bit for bit. An input that is not ±1 runs as a plain float matmul.
* :func:`xnor_conv2d`: binary convolution with weights and activations packed along
  channels (NHWC words) and ±1 padding (never 0), as XNOR-Net's binary convolution.
* :class:`BitwiseMLP`: a whole bitwise MLP run with its activations packed from layer to
  layer: the first layer binarizes the float input, each hidden layer's batch norm + sign
  is an integer threshold (:class:`~torchshrink.surgery.binary_activations.ThresholdSign`)
  applied in the kernel's epilogue, and only the last layer returns floats.

Each kernel has a plain-PyTorch reference twin (``reference_*``) the tests compare with.
The popcount path (:func:`popcount_path`) is ``"ctpop"`` (VPOPCNTQ on CPUs with AVX-512
VPOPCNTDQ) where the CPU has a popcount instruction, else the byte-table ``"lookup"``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from . import _xnor_kernels as kern
from ._common import frozen, input_matrix, output_tensor, run_kernel

_OWNER = "XnorWeight"


@functools.cache
def cpu_popcount() -> dict[str, bool]:
    """What the CPU numba compiles for offers: ``{"vpopcntdq": ..., "popcnt": ...}`` (llvmlite's host features)."""
    from llvmlite import binding

    feats = binding.get_host_cpu_features()
    return {"vpopcntdq": bool(feats.get("avx512vpopcntdq", False)), "popcnt": bool(feats.get("popcnt", False))}


def popcount_path() -> str:
    """``"ctpop"`` where the CPU has POPCNT (VPOPCNTQ when it has AVX-512 VPOPCNTDQ), else ``"lookup"``."""
    flags = cpu_popcount()
    return "ctpop" if flags["vpopcntdq"] or flags["popcnt"] else "lookup"


def _path(path: str | None) -> str:
    if path is None:
        return popcount_path()
    if path not in kern.PATHS:
        raise ModelError(f"The 'path' parameter must be one of {list(kern.PATHS)}. Got {path!r}.")
    return path


# --- packing -------------------------------------------------------------------------------


def words(n_bits: int) -> int:
    """64-bit words holding ``n_bits`` bits."""
    return (n_bits + 63) // 64


def pack_rows(bits: np.ndarray) -> np.ndarray:
    """(R, K) booleans -> (R, ceil(K/64)) uint64, bit ``j`` of word ``k`` = column ``64k + j``; tail bits 0."""
    bits = np.asarray(bits, dtype=bool)
    rows, k = bits.shape
    kw = words(k)
    packed = np.zeros((rows, kw * 8), np.uint8)
    packed[:, : (k + 7) // 8] = np.packbits(bits, axis=1, bitorder="little")
    return packed.view("<u8").astype(np.uint64, copy=False)


def unpack_rows(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`: (R, k) uint8 bits."""
    as_bytes = np.ascontiguousarray(packed, dtype="<u8").view(np.uint8)
    return np.unpackbits(as_bytes, axis=1, count=k, bitorder="little")


def interleave(packed: np.ndarray) -> np.ndarray:
    """(N, kw) row words -> (ceil(N/16), kw, 16) blocks of 16 rows (missing rows all 0)."""
    n, kw = packed.shape
    nb = (n + kern.LANES - 1) // kern.LANES
    padded = np.zeros((nb * kern.LANES, kw), np.uint64)
    padded[:n] = packed
    return np.ascontiguousarray(padded.reshape(nb, kern.LANES, kw).transpose(0, 2, 1))


def pack_signs(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """Rows of ±1 values (B, K) as packed bits (bit = value > 0)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return pack_rows(arr.reshape(arr.shape[0], -1) > 0)


# --- linear --------------------------------------------------------------------------------


@dataclass(frozen=True)
class XnorWeight:
    """A bitwise Linear weight (``out x in``, entries ±1, or 0 where ``mask`` is 0) in the kernel layout.

    ``wt`` / ``mt``: sign and mask bits as (blocks, words, 16) uint64 (``mt`` None without
    mask); ``n_active[o]``: kept weights of row ``o``.
    """

    in_features: int
    out_features: int
    wt: np.ndarray
    mt: np.ndarray | None
    n_active: np.ndarray

    @classmethod
    def from_bits(cls, signs: np.ndarray, mask: np.ndarray | None = None) -> XnorWeight:
        """From (out, in) sign bits (1 = +1) and optional mask bits (1 = kept)."""
        signs = np.asarray(signs).astype(bool)
        if signs.ndim != 2:
            raise ModelError(f"{_OWNER} needs a 2-D (out, in) weight. Got shape {list(signs.shape)}.")
        n_out, n_in = signs.shape
        if mask is None:
            return cls(n_in, n_out, frozen(interleave(pack_rows(signs))), None,
                       frozen(np.full(n_out, n_in, np.int32)))
        keep = np.asarray(mask).astype(bool)
        if keep.shape != signs.shape:
            raise ModelError(f"{_OWNER}: mask shape {list(keep.shape)} differs from the weight's {list(signs.shape)}.")
        return cls(n_in, n_out, frozen(interleave(pack_rows(signs & keep))), frozen(interleave(pack_rows(keep))),
                   frozen(keep.sum(axis=1).astype(np.int32)))

    @classmethod
    def from_dense(cls, w: np.ndarray | torch.Tensor) -> XnorWeight:
        """From a dense matrix whose entries are all in {-1, 0, +1} (0 only where masked)."""
        w = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
        if not np.isin(w, (-1.0, 0.0, 1.0)).all():
            raise ModelError(f"{_OWNER}.from_dense needs a matrix of -1, 0 and +1 entries.")
        return cls.from_bits(w > 0, (w != 0) if (w == 0).any() else None)

    @classmethod
    def from_packed(cls, packed: dict[str, Any]) -> XnorWeight | None:
        """From a ``bitwise`` packed value; None for shapes the Linear kernel does not run (conv weights)."""
        shape = list(packed["shape"])
        if len(shape) != 2:
            return None
        mask = packed.get("mask")
        return cls.from_bits(np.asarray(packed["signs"]).reshape(shape),
                             None if mask is None else np.asarray(mask).reshape(shape))

    @property
    def masked(self) -> bool:
        return self.mt is not None

    @property
    def weight_bytes(self) -> int:
        return int(self.wt.nbytes + (0 if self.mt is None else self.mt.nbytes) + self.n_active.nbytes)

    def to_dense(self) -> np.ndarray:
        """The float32 (out, in) matrix of ±1 (and 0) entries."""
        kw = self.wt.shape[1]
        rows = self.wt.transpose(0, 2, 1).reshape(-1, kw)[: self.out_features]
        w = np.where(unpack_rows(rows, self.in_features) > 0, 1.0, -1.0).astype(np.float32)
        if self.mt is not None:
            keep = unpack_rows(self.mt.transpose(0, 2, 1).reshape(-1, kw)[: self.out_features], self.in_features)
            w *= keep
        return w

    def _args(self) -> tuple:
        return self.wt, self.n_active, self.masked, self.wt if self.mt is None else self.mt

    def dot_packed(self, xp: np.ndarray, path: str | None = None) -> np.ndarray:
        """(B, out) int32 dot products of packed ±1 inputs ``xp`` (B, words) with every row."""
        self._check_words(xp)
        out = np.empty((xp.shape[0], self.out_features), np.int32)
        run_kernel(kern.gemm, xp.size * self.out_features, np.ascontiguousarray(xp), *self._args(), self.out_features, out,
                   _path(path) == "lookup")
        return out

    def sign_packed(self, xp: np.ndarray, threshold: np.ndarray, flip: np.ndarray,
                    path: str | None = None) -> np.ndarray:
        """Packed bits ``(x·w_o >= threshold[o]) XOR flip[o]``: (B, words(out)) uint64, the next layer's input."""
        self._check_words(xp)
        out = np.empty((xp.shape[0], words(self.out_features)), np.uint64)
        run_kernel(kern.gemm_sign, xp.size * self.out_features, np.ascontiguousarray(xp), *self._args(),
                   np.ascontiguousarray(threshold, np.int32), np.ascontiguousarray(flip, np.uint8),
                   self.out_features, out, _path(path) == "lookup")
        return out

    def _check_words(self, xp: np.ndarray) -> None:
        if xp.dtype != np.uint64 or xp.ndim != 2 or xp.shape[1] != self.wt.shape[1]:
            raise ModelError(f"{_OWNER}: packed input must be (batch, {self.wt.shape[1]}) uint64. "
                             f"Got {xp.dtype} {list(xp.shape)}.")

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None, path: str | None = None) -> torch.Tensor:
        """``x @ W.T + bias``; exact XNOR–popcount for ±1 inputs, a float matmul for any other input."""
        xm, lead, dtype = input_matrix(x, self.in_features, (self.out_features, self.in_features), _OWNER)
        if xm.size and bool(np.all(np.abs(xm) == 1.0)):
            y = self.dot_packed(pack_rows(xm > 0), path).astype(np.float32)
        else:
            y = (torch.from_numpy(xm) @ torch.from_numpy(self.to_dense()).T).numpy()
        return output_tensor(y, lead, dtype, bias, _OWNER)

    def __repr__(self) -> str:
        return f"XnorWeight({self.out_features}x{self.in_features}, masked={self.masked})"


def xnor_matmul(x: torch.Tensor, weight: XnorWeight, bias: torch.Tensor | None = None,
                path: str | None = None) -> torch.Tensor:
    """``x @ W.T + bias`` for a ±1 input ``x`` by XNOR–popcount (see :meth:`XnorWeight.matmul`)."""
    return weight.matmul(x, bias, path)


def reference_xnor_matmul(x: torch.Tensor, weight: np.ndarray | torch.Tensor,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """The reference twin: decode the ±1 weight, then ``F.linear``."""
    w = torch.as_tensor(np.asarray(weight, np.float32))
    return F.linear(x.float(), w, bias)


# --- convolution ---------------------------------------------------------------------------


@dataclass(frozen=True)
class XnorConvWeight:
    """Binary conv filters (out, C, kh, kw) of ±1, packed along channels: blocks (nb, kh·kw·cw, 16)."""

    out_channels: int
    in_channels: int
    kernel_size: tuple[int, int]
    wt: np.ndarray

    @classmethod
    def from_dense(cls, w: np.ndarray | torch.Tensor) -> XnorConvWeight:
        w = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
        if w.ndim != 4 or not np.isin(w, (-1.0, 1.0)).all():
            raise ModelError("XnorConvWeight needs a 4-D (out, in, kh, kw) weight of -1 and +1 entries.")
        o, c, kh, kw = w.shape
        bits = np.transpose(w > 0, (0, 2, 3, 1)).reshape(o * kh * kw, c)  # channels innermost
        packed = pack_rows(bits).reshape(o, kh * kw * words(c))
        return cls(o, c, (kh, kw), frozen(interleave(packed)))

    @property
    def weight_bytes(self) -> int:
        return int(self.wt.nbytes)


def pack_nhwc(x: torch.Tensor | np.ndarray, padding: int = 0) -> np.ndarray:
    """±1 NCHW activations -> (B, H + 2p, W + 2p, words(C)) uint64 bits, padded with +1 (not 0)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    b, c, h, w = arr.shape
    bits = np.ones((b, h + 2 * padding, w + 2 * padding, c), dtype=bool)
    bits[:, padding : padding + h, padding : padding + w] = np.transpose(arr > 0, (0, 2, 3, 1))
    return pack_rows(bits.reshape(-1, c)).reshape(b, h + 2 * padding, w + 2 * padding, words(c))


def xnor_conv2d_packed(xp: np.ndarray, weight: XnorConvWeight, stride: int = 1, path: str | None = None) -> np.ndarray:
    """Binary convolution of a padded packed NHWC input: (B, OH, OW, out) int32 dot products."""
    b, hp, wp, cw = xp.shape
    kh, kw = weight.kernel_size
    if xp.dtype != np.uint64 or cw != words(weight.in_channels):
        raise ModelError(f"xnor_conv2d: packed input must be uint64 with {words(weight.in_channels)} words per pixel.")
    oh, ow = (hp - kh) // stride + 1, (wp - kw) // stride + 1
    if oh < 1 or ow < 1:
        raise ModelError(f"xnor_conv2d: a {hp}x{wp} padded input is smaller than the {kh}x{kw} kernel.")
    out = np.empty((b, oh, ow, weight.out_channels), np.int32)
    run_kernel(kern.conv, b * oh * ow * weight.out_channels * kh * kw * cw, np.ascontiguousarray(xp), weight.wt, kh, kw, stride,
               kh * kw * weight.in_channels, weight.out_channels, oh, ow, out, _path(path) == "lookup")
    return out


def xnor_conv2d(x: torch.Tensor, weight: XnorConvWeight, stride: int = 1, padding: int = 0,
                path: str | None = None) -> torch.Tensor:
    """Binary convolution of ±1 NCHW ``x`` with ±1 padding: float32 NCHW output (exact integers)."""
    if x.dim() != 4 or x.shape[1] != weight.in_channels:
        raise ModelError(f"xnor_conv2d: input must be (batch, {weight.in_channels}, H, W). Got {tuple(x.shape)}.")
    y = xnor_conv2d_packed(pack_nhwc(x, padding), weight, stride, path)
    return torch.from_numpy(y).permute(0, 3, 1, 2).float()


def reference_xnor_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """The reference twin: pad with +1, then ``F.conv2d`` in float32."""
    xp = F.pad(x.float(), (padding,) * 4, value=1.0)
    return F.conv2d(xp, weight.float(), stride=stride)


# --- a whole bitwise MLP --------------------------------------------------------------------


class BitwiseMLP(nn.Module):
    """A bitwise MLP whose activations stay packed between layers.

    ``pre``: the float modules before the first layer (flatten, the input binarizer),
    whose ±1 output is packed once; ``hidden``: (weight, threshold, flip) per hidden layer,
    run by the fused XNOR–popcount + threshold kernel; ``last``: the output layer's weight
    and float bias; ``scale``: the :class:`~torchshrink.surgery.binary_activations.OutputScale`
    after it, if any.
    """

    def __init__(self, pre: list[nn.Module], hidden: list[tuple[XnorWeight, np.ndarray, np.ndarray]],
                 last: tuple[XnorWeight, torch.Tensor | None], scale: nn.Module | None = None) -> None:
        super().__init__()
        self.pre = nn.Sequential(*pre)
        self.hidden = [(w, np.ascontiguousarray(t, np.int32), np.ascontiguousarray(f, np.uint8)) for w, t, f in hidden]
        ws = [w for w, _, _ in self.hidden] + [last[0]]
        for a, b in zip(ws, ws[1:]):
            if a.out_features != b.in_features:
                raise ModelError("BitwiseMLP: layer sizes do not chain")
        self.last = last[0]
        self.in_features = ws[0].in_features
        self.register_buffer("bias", None if last[1] is None else last[1].detach().float().clone())
        self.scale = scale if scale is not None else nn.Identity()

    @property
    def weight_bytes(self) -> int:
        return sum(w.weight_bytes + t.nbytes + f.nbytes for w, t, f in self.hidden) + self.last.weight_bytes

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.pre(x)
        if v.dim() != 2 or v.shape[1] != self.in_features:
            raise ModelError(f"BitwiseMLP: the binarized input has shape {tuple(v.shape)}; "
                             f"the first layer takes {self.in_features} features")
        xp = pack_rows(v.detach().cpu().numpy() > 0)
        for w, t, f in self.hidden:
            xp = w.sign_packed(xp, t, f)
        y = torch.from_numpy(self.last.dot_packed(xp).astype(np.float32))
        return self.scale(y if self.bias is None else y + self.bias)


def fuse_bitwise(plain: nn.Module, fast: nn.Module) -> nn.Module:
    """``fast`` as one :class:`BitwiseMLP` when ``plain`` is a folded bitwise MLP chain, else ``fast``.

    The chain (``plain``'s children in order, as :class:`~torchshrink.models.mlp.MLP` runs
    them): flatten / identity / dropout, the input binarizer, then per hidden layer a
    bitwise Linear (no bias) and its :class:`ThresholdSign`, a last bitwise Linear and an
    optional :class:`~torchshrink.surgery.binary_activations.OutputScale`.
    """
    from ..models.mlp import MLP
    from ..surgery.binary_activations import BinaryInput, OutputScale, ThresholdSign
    from .modules import CompressedLinear

    if not isinstance(plain, MLP):
        return fast
    passive = (nn.Flatten, nn.Identity, nn.Dropout)
    pre: list[nn.Module] = []
    hidden: list[list[Any]] = []
    last: tuple[XnorWeight, torch.Tensor | None] | None = None
    binarized = False
    scale: nn.Module | None = None
    fast_children = dict(fast.named_children())
    for name, m in plain.named_children():
        f = fast_children.get(name)
        if last is None and not hidden and not isinstance(m, nn.Linear):
            if not isinstance(m, (*passive, BinaryInput)):
                return fast
            binarized |= isinstance(m, BinaryInput)
            pre.append(m)
        elif isinstance(m, nn.Linear):
            if not binarized or last is not None or not (isinstance(f, CompressedLinear)
                                                         and isinstance(f.weight_, XnorWeight)):
                return fast
            last = (f.weight_, f.bias)
        elif isinstance(m, ThresholdSign):
            if last is None or last[1] is not None or m.threshold.numel() != last[0].out_features:
                return fast
            hidden.append([last[0], m.threshold.numpy(), m.flip.numpy()])
            last = None
        elif isinstance(m, OutputScale):
            if last is None or scale is not None:
                return fast
            scale = m
        elif scale is not None or not isinstance(m, (nn.Identity, nn.Dropout)):
            return fast
    if last is None or not hidden:
        return fast
    return BitwiseMLP(pre, [tuple(h) for h in hidden], last, scale).eval()
