"""A whole pruned, weight-shared MLP in one kernel call (EIE's batch-1 path).

For LeNet-size layers the per-call cost of any kernel launched from Python (argument
conversion, dispatch: 15-30 us) exceeds the arithmetic, and dense PyTorch's per-layer
overhead is what a small model's latency is made of. EIE (Han et al. 2016) runs the whole
network on the accelerator, layer after layer, skipping zero activations. This module
does the same on the CPU: when a model is a plain chain of flatten, compressed Linear,
ReLU and dropout (in eval mode, an identity), the chain runs as ONE compiled function:
for each sample, for each layer, for each nonzero input activation ``x_j``, walk column
``j``'s (row, code) entries and accumulate ``codebook[code] * x_j``; then bias and ReLU.

The chain is found with ``torch.fx`` on the plain model (before its layers are swapped);
anything else in the graph (a residual add, a conv) leaves the model unfused.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import fx, nn

from ._common import available_cores, oversubscribed, run_kernel
from .dispatch import Dispatching
from .modules import CompressedLinear
from .shared import SharedWeightsKernel

_PASS = (nn.Dropout, nn.Identity, nn.Flatten)


@njit(cache=True)
def _body(x, sizes, ptr_off, ent_off, cb_off, relu, col_ptr, col_row, col_code, codebooks, biases, out, bufs, b):
    """Sample ``b`` through every layer (EIE column walk over nonzero activations)."""
    n_layers = sizes.size - 1
    buf = bufs[b]
    cur, nxt = 0, 1
    for j in range(sizes[0]):
        buf[cur, j] = x[b, j]
    bias_at = 0
    for layer in range(n_layers):
        n_in, n_out = sizes[layer], sizes[layer + 1]
        for o in range(n_out):
            buf[nxt, o] = biases[bias_at + o]
        p0, e0, c0 = ptr_off[layer], ent_off[layer], cb_off[layer]
        for j in range(n_in):
            v = buf[cur, j]
            if v == 0.0:
                continue  # dynamic activation sparsity
            for p in range(col_ptr[p0 + j], col_ptr[p0 + j + 1]):
                buf[nxt, col_row[e0 + p]] += codebooks[c0 + col_code[e0 + p]] * v
        if relu[layer]:
            for o in range(n_out):
                if buf[nxt, o] < 0.0:
                    buf[nxt, o] = 0.0
        bias_at += n_out
        cur, nxt = nxt, cur
    for o in range(sizes[n_layers]):
        out[b, o] = buf[cur, o]


@njit(cache=True)
def _chain(x, sizes, ptr_off, ent_off, cb_off, relu, col_ptr, col_row, col_code, codebooks, biases, out, bufs):
    for b in range(x.shape[0]):
        _body(x, sizes, ptr_off, ent_off, cb_off, relu, col_ptr, col_row, col_code, codebooks, biases, out, bufs, b)


@njit(cache=True, parallel=True)
def _chain_parallel(x, sizes, ptr_off, ent_off, cb_off, relu, col_ptr, col_row, col_code, codebooks, biases, out,
                    bufs, threads):  # ``threads``: run_kernel's convention; numba's count is already set
    for b in prange(x.shape[0]):
        _body(x, sizes, ptr_off, ent_off, cb_off, relu, col_ptr, col_row, col_code, codebooks, biases, out, bufs, b)


#: Batches at least this large are split over threads (one sample per task).
PARALLEL_MIN_BATCH = 16


class FusedSharedMLP(Dispatching):
    """A chain of EIE-style sparse, weight-shared Linear layers (+ ReLU) run in one call.

    Its dense twin (:func:`~torchshrink.runtime.dispatch.attach_twin`) is the per-layer
    runtime model, whose layers dispatch on their own: per input shape the fused call runs
    only where it was measured faster than the layers one by one.
    """

    def __init__(self, layers: list[tuple[SharedWeightsKernel, torch.Tensor | None, bool]], flatten: bool) -> None:
        super().__init__()
        ws = [w for w, _, _ in layers]
        for a, b in zip(ws, ws[1:]):
            if a.out_features != b.in_features:
                raise ValueError("layer sizes do not chain")
        self.flatten = flatten
        self.sizes = np.array([ws[0].in_features] + [w.out_features for w in ws], np.int64)
        self.ptr_off = np.cumsum([0] + [w.in_features + 1 for w in ws[:-1]]).astype(np.int64)
        self.ent_off = np.cumsum([0] + [w.nnz for w in ws[:-1]]).astype(np.int64)
        self.cb_off = np.cumsum([0] + [w.codebook.size for w in ws[:-1]]).astype(np.int64)
        self.relu = np.array([r for _, _, r in layers], np.uint8)
        self.col_ptr = np.concatenate([w.col_ptr for w in ws]).astype(np.int64)
        self.col_row = np.concatenate([w.col_row.astype(np.int32) for w in ws])
        self.col_code = np.concatenate([w.col_code for w in ws])
        self.codebooks = np.concatenate([w.codebook for w in ws]).astype(np.float32)
        self.biases = np.concatenate([
            np.zeros(w.out_features, np.float32) if b is None else b.detach().float().numpy()
            for w, b, _ in layers])
        self.width = int(self.sizes.max())
        self.weight_bytes = int(sum(a.nbytes for a in (self.col_ptr, self.col_row, self.col_code, self.codebooks,
                                                       self.biases)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dispatch(x)

    def run_kernel(self, x: torch.Tensor) -> torch.Tensor:
        if self.flatten:
            x = x.reshape(x.shape[0], -1)
        if x.dim() != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"FusedSharedMLP expects input (batch, {self.sizes[0]}); got {tuple(x.shape)}")
        xm = x.detach().to(torch.float32).contiguous().numpy()
        out = np.empty((xm.shape[0], int(self.sizes[-1])), np.float32)
        bufs = np.empty((xm.shape[0], 2, self.width), np.float32)
        args = (xm, self.sizes, self.ptr_off, self.ent_off, self.cb_off, self.relu, self.col_ptr, self.col_row,
                self.col_code, self.codebooks, self.biases, out, bufs)
        if xm.shape[0] >= PARALLEL_MIN_BATCH and available_cores() > 1 and not oversubscribed():
            run_kernel(_chain_parallel, 1 << 30, *args)
        else:
            _chain(*args)
        return torch.from_numpy(out)


def _chain_of(plain: nn.Module) -> list[tuple[str, str]] | None:
    """The model's graph as [(kind, module name)] if it is a plain Linear/ReLU chain, else None."""
    try:
        graph = fx.symbolic_trace(plain).graph
    except Exception:  # noqa: BLE001 - an untraceable model simply stays unfused
        return None
    mods = dict(plain.named_modules())
    chain: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "call_module":
            m = mods[node.target]
            if isinstance(m, nn.Linear):
                chain.append(("linear", node.target))
            elif isinstance(m, nn.ReLU):
                chain.append(("relu", node.target))
            elif isinstance(m, nn.Flatten):
                chain.append(("flatten", node.target))
            elif not isinstance(m, _PASS):
                return None
        elif node.op == "call_function" and node.target in (torch.relu, nn.functional.relu):
            chain.append(("relu", ""))
        elif node.op == "call_function" and node.target is torch.flatten:
            chain.append(("flatten", ""))
        else:
            return None
        if len(node.all_input_nodes) != 1:
            return None
    return chain


def fuse(plain: nn.Module, fast: nn.Module) -> nn.Module:
    """``fast`` as one :class:`FusedSharedMLP` when ``plain`` is a pure sparse-shared MLP chain.

    A chain with convolutions and pooling becomes a :class:`~torchshrink.runtime.fused_net.FusedNet`.
    """
    chain = _chain_of(plain)
    if chain is None:  # a conv net: the whole chain as one program, if it is one
        from .fused_net import fuse_net

        return fuse_net(plain, fast)
    if not any(k == "linear" for k, _ in chain):
        return fast
    fast_mods = dict(fast.named_modules())
    flatten = chain[0][0] == "flatten"
    body = chain[1:] if flatten else chain
    layers: list[tuple[SharedWeightsKernel, torch.Tensor | None, bool]] = []
    for i, (kind, name) in enumerate(body):
        if kind == "flatten":
            return fast
        if kind == "relu":
            if not layers or layers[-1][2]:
                return fast
            w, b, _ = layers[-1]
            layers[-1] = (w, b, True)
            continue
        m = fast_mods[name]
        if not isinstance(m, CompressedLinear) or not isinstance(m.weight_, SharedWeightsKernel):
            return fast
        layers.append((m.weight_, m.bias, False))
    return FusedSharedMLP(layers, flatten)
