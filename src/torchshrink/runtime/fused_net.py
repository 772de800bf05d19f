"""A whole small pruned CNN (conv, max-pool, ReLU, Linear chain) in one kernel call.

A LeNet-5 on 8x8 digits does ~0.1 M multiply-adds per image after pruning: far less than
the per-layer cost of calling any kernel from Python (tensor to array conversion,
argument unboxing, dispatch: 10-30 us each), so running its layers one kernel at a time
is no faster than dense PyTorch. EIE (Han et al. 2016) runs the whole network layer
after layer on the accelerator; :class:`FusedNet` does the same on the CPU for a plain
chain of ``Conv2d`` (groups 1, zero padding), ``MaxPool2d`` (no padding), ``ReLU``,
``Flatten``, ``Linear`` (and dropout / identity, which are no-ops in eval mode): one
numba call (:mod:`._fused_net_kernels`) per batch, direct sparse convolutions and EIE
column walks over the nonzero weights, no tensor between layers.

The weights are the decoded layer weights of the plain model (what the file's forms
decode to), kept as their nonzeros, so the output equals the decoded dense model's
within float32 rounding (sums in another order). The chain is found with ``torch.fx``;
anything else in the graph (a residual add, batch norm, an average pool) leaves the model
unfused. Like every runtime layer it is a :class:`~torchshrink.runtime.dispatch.Dispatching`
module whose dense twin is the per-layer runtime model: it runs only at the batch sizes
where it was measured faster.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from ._common import float32_numpy, run_kernel
from ._fused_net_kernels import CONV, CONV_COLS, LANES, LINEAR, POOL, RELU, fused_net
from .dispatch import Dispatching
from .modules import im2col_ok

#: Largest ``im2col`` (floats per sample) a convolution runs as ``CONV_COLS``; larger planes run ``CONV``.
MAX_COLS = 1 << 16

_PASS = (nn.Dropout, nn.Identity)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def net_chain(plain: nn.Module) -> list[nn.Module] | None:
    """The layers of ``plain`` in order if it is a plain chain of the kinds :class:`FusedNet` runs, else None."""
    try:
        graph = fx.symbolic_trace(plain).graph
    except Exception:  # noqa: BLE001 - an untraceable model simply stays unfused
        return None
    mods = dict(plain.named_modules())
    chain: list[nn.Module] = []
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if len(node.all_input_nodes) != 1:
            return None
        if node.op == "call_function" and node.target in (torch.relu, nn.functional.relu) and not node.kwargs:
            chain.append(nn.ReLU())
            continue
        if node.op == "call_function" and node.target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
            if (start, end) != (1, -1):
                return None
            chain.append(nn.Flatten())
            continue
        if node.op != "call_module":
            return None
        m = mods[node.target]
        ok = (isinstance(m, (nn.Linear, nn.ReLU, *_PASS))
              or (isinstance(m, nn.Conv2d) and im2col_ok(m))
              or (isinstance(m, nn.MaxPool2d) and _pair(m.padding) == (0, 0) and _pair(m.dilation) == (1, 1)
                  and not m.ceil_mode and not m.return_indices)
              or (isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1))
        if not ok:
            return None
        if not isinstance(m, _PASS):
            chain.append(m)
    return chain if any(isinstance(m, nn.Conv2d) for m in chain) else None


class FusedNet(Dispatching):
    """A chain of (sparse) conv / pool / ReLU / Linear layers run as one program (see the module docs)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = list(layers)  # a plain list: outside the module tree (the weights stay the plain model's)
        nnz = sum(int(torch.count_nonzero(m.weight)) for m in self.layers if hasattr(m, "weight"))
        ptrs = sum((m.out_channels if isinstance(m, nn.Conv2d) else m.in_features) + 1
                   for m in self.layers if isinstance(m, (nn.Conv2d, nn.Linear)))
        biases = sum(m.weight.shape[0] for m in self.layers if isinstance(m, (nn.Conv2d, nn.Linear)))
        #: Bytes of weight data a call reads: int32 index and fp32 value per nonzero, int64 pointers, fp32 biases.
        self.weight_bytes = 8 * nnz + 8 * ptrs + 4 * biases
        self._program: dict[tuple[int, ...], tuple] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dispatch(x)

    def __getattr__(self, name: str) -> Any:
        """Attributes it lacks come from its twin, the per-layer runtime model (``fast.conv1`` still works)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            twin = self.__dict__.get("_twin")
            if not twin or name.startswith("__"):
                raise
            return getattr(twin[0], name)

    def __getitem__(self, idx: Any) -> Any:
        """Indexing reaches the twin's layers, as attributes do (``fast[2]`` of a Sequential)."""
        twin = self.__dict__.get("_twin")
        if not twin:
            raise TypeError("this fused chain dropped its per-layer twin (load(..., lean=True)); "
                            "it has no layers to index")
        return twin[0][idx]

    def program(self, in_shape: tuple[int, ...]) -> tuple:
        """``(ops, ptr, idx, val, bias, width, out_shape, work)`` for one sample of shape ``in_shape``."""
        got = self._program.get(in_shape)
        if got is None:
            got = _compile(self.layers, in_shape)
            self._program = {in_shape: got}  # one input size at a time (a model sees one)
        return got

    def run_kernel(self, x: torch.Tensor) -> torch.Tensor:
        ops, ptr, idx, val, bias, width, out_shape, work = self.program(tuple(x.shape[1:]))
        n = x.shape[0]
        xa = float32_numpy(x).reshape(n, -1)
        out = np.empty((n, math.prod(out_shape)), np.float32)
        bufs = np.empty((n, 4, width), np.float32)
        run_kernel(fused_net, work * n, xa, ops, ptr, idx, val, bias, out, bufs)
        y = torch.from_numpy(out).reshape(n, *out_shape)
        return y if x.dtype == torch.float32 else y.to(x.dtype)


def _compile(layers: list[nn.Module], in_shape: tuple[int, ...]) -> tuple:
    """The program of ``layers`` for one input of ``in_shape`` (see :mod:`._fused_net_kernels`)."""
    rows: list[list[int]] = []
    ptrs: list[np.ndarray] = []
    idxs: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    n_ptr = n_val = n_bias = 0
    shape = tuple(int(d) for d in in_shape)
    width = int(np.prod(shape))
    work = 0

    def weights(ptr: np.ndarray, idx: np.ndarray, val: np.ndarray, bias: torch.Tensor | None, n_out: int) -> None:
        nonlocal n_ptr, n_val, n_bias
        ptrs.append(ptr + n_val)
        idxs.append(idx.astype(np.int32))
        vals.append(val.astype(np.float32))
        biases.append(np.zeros(n_out, np.float32) if bias is None else bias.detach().float().numpy())
        n_ptr, n_val, n_bias = n_ptr + ptr.size, n_val + val.size, n_bias + n_out

    for m in layers:
        if isinstance(m, nn.Conv2d):
            if len(shape) != 3 or shape[0] != m.in_channels:
                raise ValueError(f"FusedNet: conv expects (C={m.in_channels}, H, W), got {shape}")
            c, h, w = shape
            (kh, kw), (ph, pw), (dh, dw), (sh, sw) = (_pair(m.kernel_size), _pair(m.padding), _pair(m.dilation),
                                                      _pair(m.stride))
            hp, wp = h + 2 * ph, w + 2 * pw
            oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
            dense = m.weight.detach().float().numpy()
            o, ci, ky, kx = np.nonzero(dense)
            ptr = np.zeros(m.out_channels + 1, np.int64)
            np.cumsum(np.bincount(o, minlength=m.out_channels), out=ptr[1:])
            wide = sh == 1 and sw == 1  # CONV_COLS reads the padded input directly (see the kernel module)
            cols = (oh - 1) * wp + ow + LANES if wide else c * kh * kw * -(-oh * ow // LANES) * LANES
            offsets = ci * hp * wp + ky * dh * wp + kx * dw
            if wide or cols <= MAX_COLS:
                rows.append([CONV_COLS, c, h, w, ph, pw, sh, sw, oh, ow, m.out_channels, n_ptr, n_bias, kh, kw, dh, dw])
                weights(ptr, offsets if wide else (ci * kh + ky) * kw + kx, dense[o, ci, ky, kx], m.bias,
                        m.out_channels)
            else:
                rows.append([CONV, c, h, w, ph, pw, sh, sw, oh, ow, m.out_channels, n_ptr, n_bias])
                weights(ptr, offsets, dense[o, ci, ky, kx], m.bias, m.out_channels)
                cols = 0
            width = max(width, c * hp * wp + LANES, cols, m.out_channels * oh * ow + LANES)
            work += o.size * oh * ow
            shape = (m.out_channels, oh, ow)
        elif isinstance(m, nn.Linear):
            n_in = int(np.prod(shape))
            if len(shape) != 1 or n_in != m.in_features:
                raise ValueError(f"FusedNet: linear expects ({m.in_features},), got {shape}")
            dense = m.weight.detach().float().numpy()
            col, row = np.nonzero(dense.T)  # column-major: EIE walks a column per nonzero activation
            ptr = np.zeros(m.in_features + 1, np.int64)
            np.cumsum(np.bincount(col, minlength=m.in_features), out=ptr[1:])
            rows.append([LINEAR, m.in_features, m.out_features, n_ptr, n_bias])
            weights(ptr, row, dense[row, col], m.bias, m.out_features)
            work += row.size
            shape = (m.out_features,)
        elif isinstance(m, nn.MaxPool2d):
            c, h, w = shape
            (kh, kw), (sh, sw) = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
            oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
            rows.append([POOL, c, h, w, kh, kw, sh, sw, oh, ow])
            shape = (c, oh, ow)
        elif isinstance(m, nn.ReLU):
            rows.append([RELU])
        else:  # nn.Flatten
            shape = (int(np.prod(shape)),)
        width = max(width, int(np.prod(shape)))
    ops = np.zeros((len(rows), 17), np.int64)
    for r, row_ in enumerate(rows):
        ops[r, :len(row_)] = row_
    return (ops, np.concatenate(ptrs), np.concatenate(idxs), np.concatenate(vals), np.concatenate(biases), width,
            shape, work)


def fuse_net(plain: nn.Module, fast: nn.Module) -> nn.Module:
    """``fast`` as one :class:`FusedNet` when ``plain`` is a conv / pool / ReLU / Linear chain, else ``fast``.

    ``plain`` holds the decoded weights; the program reads them. A model with no runtime
    layer (nothing compressed) stays as it is, and so does one with a layer of another
    form (ternary, binary, PQ, TT...): those run their own per-layer kernels, which the
    sparse program would replace by its walk over the decoded nonzeros.
    """
    from .modules import runtime_layers

    chain = net_chain(plain)
    if chain is None or runtime_layers(fast) == 0 or not _sparse_only(fast):
        return fast
    return FusedNet(chain)


def _sparse_only(fast: nn.Module) -> bool:
    """Every runtime layer of ``fast`` is a sparse or shared-weights (Deep Compression / EIE) layer."""
    from .modules import CompressedConv2d, CompressedLinear
    from .shared import SharedWeightsKernel
    from .sparse import SparseKernel

    layers = [m for m in fast.modules() if hasattr(m, "weight_bytes")]
    return all(isinstance(m, (CompressedLinear, CompressedConv2d))
               and isinstance(m.weight_, (SharedWeightsKernel, SparseKernel)) for m in layers)
