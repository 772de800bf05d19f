"""The channel dependency graph: which channels of which layers must be removed together.

Structured pruning (Li et al. 2017 §3.2, Wen et al. 2016 §3) removes a filter together with
the feature map it makes and every place that feature map is read: the next layers' input
channels, the batch-norm entries, the other branches of a residual add, a slice of a
concatenation, a block of columns of a linear layer after a flatten. This module finds
those couplings on any traceable model.

How: the model runs once on an example input, traced with ``torch.fx`` (an
:class:`~torch.fx.Interpreter` runs the symbolic graph on real values) or, where symbolic
tracing fails (data-dependent control flow), by a concrete-value trace (module hooks plus a
``TorchFunctionMode`` that sees every torch call of the real forward). Each tensor carries
a *label array*: an int array broadcastable to the tensor's shape naming, per position,
the *atom* (one output channel of one producer layer) it belongs to (``-1``: not
removable, e.g. the input image or a zero-padded channel). Producers (convolutions,
linear layers, embeddings) make fresh atoms; pass-through ops keep labels; reshapes,
permutes, slices, splits, pads and concatenations move them exactly as the op moves the
data (the op is applied to the label array itself); elementwise ops between tensors
*unify* the atoms they combine position by position (union-find), so all branches of a
residual add end in one group. Grouped convolutions couple input channel ``i`` with
output channel ``i`` and require the same count removed from each group (depthwise:
``groups`` shrinks). Anything unknown that touches labelled channels *freezes* them
(left alone, with a warning naming the op); so do the model's outputs. Nothing is ever
cut on a guess.

The result, :class:`DependencyGraph`, lists every *use* (a module or parameter axis
indexed by channels), and the removable :class:`ChannelGroup` s (atoms with the same set
of producers, e.g. every channel of one conv, or one channel of every conv feeding the
same residual stream). :meth:`DependencyGraph.cuts` turns a set of removed atoms into the
per-layer keep-lists of a :class:`~torchshrink.surgery.prune_channels.PruneChannels` op.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.overrides import TorchFunctionMode

from ..core.select import unwrap
from ..errors import ModelError

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORM = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
#: Layer types whose parameters are indexed by channels (cut by :mod:`torchshrink.surgery.cut`).
CHANNEL_LAYERS = (*CONV, *CONV_T, nn.Linear, *NORM, nn.LayerNorm, nn.GroupNorm, nn.PReLU, nn.Embedding)
#: Parameter-free modules that act on each channel alone (labels pass through unchanged).
PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)
_PASS_FUNCS = {
    "relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish",
    "hardsigmoid", "hardtanh", "sigmoid", "sigmoid_", "tanh", "softplus", "dropout", "dropout1d", "dropout2d",
    "alpha_dropout", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "interpolate", "upsample", "contiguous", "clone", "detach", "float", "to", "type",
    "neg", "abs", "exp", "sqrt", "rsqrt", "clamp", "clamp_", "clamp_min", "clamp_max", "hardtanh_", "relu6_",
    "square", "erf", "stochastic_depth",
}
_BINARY = {"add", "add_", "iadd", "radd", "sub", "sub_", "isub", "rsub", "mul", "mul_", "imul", "rmul", "div",
           "div_", "truediv", "itruediv", "rtruediv", "pow", "maximum", "minimum"}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_PERMUTE = {"permute", "transpose", "swapaxes", "t", "movedim"}
_REDUCE = {"mean", "sum", "amax", "amin"}
_CAT = {"cat", "concat", "concatenate"}
_SPLIT = {"split", "chunk", "tensor_split", "unbind", "split_with_sizes"}
_IGNORED = {"size", "dim", "numel", "shape", "getattr", "get", "__get__", "is_floating_point", "__len__", "len",
            "__bool__", "is_contiguous", "element_size", "dtype", "device", "is_cuda", "ndim"}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class Use:
    """One place indexed by channels: ``labels[i]`` is the atom of index ``i`` along the axis.

    ``role``: ``"out"`` (a producer's output channels), ``"in"`` (a consumer's input
    channels or features), ``"channel"`` (a layer whose input and output channels are the
    same: batch/layer/group norm, PReLU, depthwise or grouped conv), ``"param"`` (a bare
    parameter or buffer used elementwise, cut along ``axis``).
    """

    target: str
    role: str
    labels: np.ndarray
    axis: int = 0


@dataclass
class ChannelGroup:
    """Atoms that share the same producers: removable together as "one channel" each.

    ``atoms`` are union-find roots; ``members[k]`` lists the ``(producer, out index)`` pairs
    of atom ``k`` (more than one where a residual add or a multiply couples producers);
    ``blocks``: removal must take the same count from each of ``blocks`` equal runs of
    ``atoms`` (grouped convs, group norm); ``1`` otherwise.
    """

    producers: tuple[str, ...]
    atoms: list[int]
    members: list[list[tuple[str, int]]]
    blocks: int = 1

    @property
    def size(self) -> int:
        return len(self.atoms)


@dataclass
class DependencyGraph:
    """The traced coupling of a model's channels (see the module docstring)."""

    uses: list[Use]
    groups: list[ChannelGroup]
    root: Callable[[int], int]
    tracer: str
    warnings: list[str] = field(default_factory=list)

    def group_of(self, producer: str) -> ChannelGroup:
        """The group whose producers include ``producer`` (a layer name)."""
        for g in self.groups:
            if producer in g.producers:
                return g
        raise ModelError(f"no prunable channel group is produced by {producer!r}; "
                         f"groups: {', '.join('+'.join(g.producers) for g in self.groups) or '(none)'}")

    def cuts(self, removed: Iterable[int]) -> list[dict[str, Any]]:
        """Keep-lists per use for removing the atoms ``removed`` (roots): ``[{target, role, axis, keep}]``.

        Uses that lose nothing are left out; entries come in trace order.
        """
        gone = {self.root(int(a)) for a in removed}
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, str, int]] = set()
        for u in self.uses:
            key = (u.target, u.role, u.axis)
            if key in seen:
                continue
            seen.add(key)
            drop = np.array([lab >= 0 and self.root(int(lab)) in gone for lab in u.labels], dtype=bool)
            if drop.any():
                if drop.all():
                    raise ModelError(f"removing these channels would leave {u.target!r} with no {u.role} channel")
                out.append({"target": u.target, "role": u.role, "axis": u.axis,
                            "keep": np.flatnonzero(~drop).tolist()})
        return out


# ---------------------------------------------------------------- tracing


class _Tracer(torch.fx.Tracer):
    """fx tracer whose leaves are torch.nn's modules and any subclass of a channel layer."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, CHANNEL_LAYERS) or super().is_leaf_module(m, qualname)


def _is_leaf(m: nn.Module) -> bool:
    if isinstance(m, CHANNEL_LAYERS):
        return True
    return m.__module__.startswith("torch.nn") and not isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))


def _op_name(target: Any) -> str:
    name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
    return name


def trace(model: nn.Module, example: torch.Tensor, *, mode: str = "auto") -> DependencyGraph:
    """The :class:`DependencyGraph` of ``model`` on the input ``example`` (a batch of 1 is enough).

    ``mode``: ``"fx"`` (symbolic trace run on real values), ``"concrete"`` (hooks and a
    torch-function mode on the real forward) or ``"auto"`` (fx, then concrete if symbolic
    tracing fails). The model runs in eval mode and is left as it was.
    """
    model = unwrap(model)
    if mode not in ("auto", "fx", "concrete"):
        raise ModelError(f"The 'mode' parameter of trace must be 'auto', 'fx' or 'concrete'. Got {mode!r}.")
    from torch.nn.utils import parametrize

    bad = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    if bad:
        raise ModelError(f"structured pruning needs plain layers; {bad[0]!r} has weight transforms "
                         "(torchshrink.bake the model first)")
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            if mode in ("auto", "fx"):
                try:
                    gm = torch.fx.GraphModule(model, _Tracer().trace(model))
                except Exception as exc:  # noqa: BLE001 - any symbolic-trace failure falls back
                    if mode == "fx":
                        raise ModelError(f"torch.fx cannot trace {type(model).__name__}: {exc}") from None
                    gm = None
                if gm is not None:
                    prop = _Propagator(model)
                    out = _Interp(gm, prop).run(example)
                    return prop.finish(out, "fx")
            prop = _Propagator(model)
            out = _concrete_run(model, example, prop)
            return prop.finish(out, "concrete")
    finally:
        for m, t in was:
            m.training = t


class _Interp(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, prop: _Propagator) -> None:
        super().__init__(gm)
        self.prop = prop

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.op in ("call_module", "call_function", "call_method"):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            if n.op == "call_module":
                self.prop.module(n.target, self.fetch_attr(n.target), args, out)
            else:
                self.prop.call(_op_name(n.target), args, kwargs, out)
        return out


class _Mode(TorchFunctionMode):
    def __init__(self, prop: _Propagator) -> None:
        super().__init__()
        self.prop, self.depth = prop, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            self.prop.call(_op_name(func), args, kwargs, out)
        return out


def _concrete_run(model: nn.Module, example: torch.Tensor, prop: _Propagator) -> Any:
    mode = _Mode(prop)
    handles = []
    leaves = [(n, m) for n, m in model.named_modules() if n and _is_leaf(m)]
    inside: set[int] = set()
    for name, m in leaves:
        def pre(mod: nn.Module, inputs: Any) -> None:
            mode.depth += 1

        def post(mod: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
            mode.depth -= 1
            if mode.depth == 0:
                prop.module(name, mod, inputs, output)

        if id(m) in inside:
            continue
        inside.add(id(m))
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        with mode:
            return model(example)
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------- label propagation


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in _tensors(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def _full(lab: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(lab, shape))


def _compress(arr: np.ndarray) -> np.ndarray:
    """The smallest broadcastable array: dims along which nothing varies shrink to size 1."""
    for d in range(arr.ndim):
        if arr.shape[d] > 1 and (arr == arr.take([0], axis=d)).all():
            arr = arr.take([0], axis=d)
    return arr


def _varying(lab: np.ndarray) -> list[int]:
    return [d for d, s in enumerate(lab.shape) if s > 1]


class _Propagator:
    """Carries label arrays through the ops of one forward pass (keyed by tensor identity)."""

    def __init__(self, model: nn.Module) -> None:
        self.uf = _UnionFind()
        self.labs: dict[int, np.ndarray] = {}
        self.keep_alive: list[Any] = []
        self.uses: list[Use] = []
        self.frozen: list[int] = []
        self.blocks: list[tuple[np.ndarray, int]] = []
        self.producer_of: dict[int, tuple[str, int]] = {}
        self.out_atoms: dict[str, np.ndarray] = {}
        self.notes: list[str] = []
        self.params = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self.params.update({id(b): n for n, b in model.named_buffers(remove_duplicate=False)})

    # -- bookkeeping
    def lab(self, t: Any) -> np.ndarray | None:
        return self.labs.get(id(t)) if isinstance(t, torch.Tensor) else None

    def set(self, t: torch.Tensor, lab: np.ndarray | None) -> None:
        if lab is None or not (lab >= 0).any():
            self.labs.pop(id(t), None)
            return
        self.keep_alive.append(t)
        self.labs[id(t)] = lab

    def freeze(self, lab: np.ndarray | None, why: str) -> None:
        if lab is None:
            return
        atoms = np.unique(lab[lab >= 0])
        if atoms.size:
            self.frozen.extend(int(a) for a in atoms)
            if why and why not in self.notes:
                self.notes.append(why)

    def unify(self, a: np.ndarray, b: np.ndarray) -> None:
        pairs = np.unique(np.stack([a.ravel(), b.ravel()], 1), axis=0)
        for x, y in pairs:
            if x >= 0 and y >= 0:
                self.uf.union(int(x), int(y))
            elif x >= 0 or y >= 0:
                self.frozen.append(int(max(x, y)))

    def use(self, target: str, role: str, labels: np.ndarray, axis: int = 0) -> None:
        labels = np.asarray(labels, dtype=np.int64).ravel()
        for u in self.uses:
            if (u.target, u.role, u.axis) == (target, role, axis):
                self.unify(u.labels, labels)  # a layer called twice sees coupled channels
                return
        self.uses.append(Use(target, role, labels, axis))

    def fresh(self, name: str, n: int, out_use: bool = True) -> np.ndarray:
        if name not in self.out_atoms:
            ids = self.uf.new(n)
            for i, a in enumerate(ids):
                self.producer_of[int(a)] = (name, i)
            self.out_atoms[name] = ids
            if out_use:
                self.uses.append(Use(name, "out", ids))
        return self.out_atoms[name]

    @staticmethod
    def along(lab: np.ndarray, dim: int, size: int) -> np.ndarray:
        idx = [0] * lab.ndim
        idx[dim] = slice(None)
        return np.broadcast_to(lab[tuple(idx)], (size,)).copy()

    @staticmethod
    def shaped(vec: np.ndarray, ndim: int, dim: int) -> np.ndarray:
        shape = [1] * ndim
        shape[dim] = len(vec)
        return np.asarray(vec, dtype=np.int64).reshape(shape)

    # -- modules
    def module(self, name: str, m: nn.Module, args: Any, out: Any) -> None:
        x = args[0] if args else None
        lab = self.lab(x)
        if isinstance(m, PASS_MODULES):
            self.passthrough(x, out, f"{name} ({type(m).__name__})")
            return
        if isinstance(m, (nn.Flatten, nn.Unflatten)):
            self.reshape(x, out)
            return
        if not isinstance(m, CHANNEL_LAYERS) or not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
            for t in _tensors(args):
                self.freeze(self.lab(t), f"{name} ({type(m).__name__}) is not a known layer: its channels are left alone")
            return
        ch = self._channel_dim(m, x)
        if lab is not None and (_varying(lab) not in ([], [ch])):
            self.freeze(lab, f"{name} ({type(m).__name__}) reads its channels from an unexpected dim: left alone")
            lab = None
        vec = None if lab is None else self.along(lab, ch, x.shape[ch])
        if isinstance(m, (*CONV, *CONV_T)):
            self.conv(name, m, vec, out)
        elif isinstance(m, nn.Linear):
            if vec is not None:
                self.use(name, "in", vec)
            self.set(out, self.shaped(self.fresh(name, m.out_features), out.ndim, out.ndim - 1))
        elif isinstance(m, nn.Embedding):
            self.set(out, self.shaped(self.fresh(name, m.embedding_dim), out.ndim, out.ndim - 1))
        else:  # norms, PReLU: per-channel parameters, labels pass through
            if isinstance(m, nn.PReLU) and m.num_parameters == 1:
                self.set(out, lab)
                return
            if vec is not None:
                self.use(name, "channel", vec)
                if isinstance(m, nn.GroupNorm):
                    self.blocks.append((vec, m.num_groups))
            self.set(out, lab)

    def _channel_dim(self, m: nn.Module, x: torch.Tensor) -> int:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            return x.ndim - 1
        if isinstance(m, nn.LayerNorm):
            lab = self.lab(x)
            if type(m) is not nn.LayerNorm and lab is not None and len(_varying(lab)) == 1 \
                    and len(m.normalized_shape) == 1 and x.shape[_varying(lab)[0]] == m.normalized_shape[0]:
                return _varying(lab)[0]  # a LayerNorm subclass on channels-first input (LayerNorm2d)
            return x.ndim - 1
        return 1 if x.ndim > 1 else 0

    def conv(self, name: str, m: nn.Module, vec: np.ndarray | None, out: torch.Tensor) -> None:
        cin, cout, g = m.in_channels, m.out_channels, m.groups
        transposed = isinstance(m, CONV_T)
        if g == 1:
            if vec is not None:
                self.use(name, "in", vec)
            self.set(out, self.shaped(self.fresh(name, cout), out.ndim, 1))
        elif cin == cout and not transposed:
            # depthwise (groups == channels) or grouped with equal in/out: channel i in -> i out
            if vec is None:
                vec = np.full(cin, -1, dtype=np.int64)
            fresh = self.fresh(name, cout, out_use=False)
            self.unify(vec, fresh)
            self.use(name, "channel", fresh)
            if g < cin:
                self.blocks.append((fresh, g))
            self.set(out, self.shaped(fresh, out.ndim, 1))
        else:
            self.freeze(vec, f"{name}: grouped conv with in != out channels is left alone")
            fresh = self.fresh(name, cout)
            self.frozen.extend(int(a) for a in fresh)
            self.set(out, self.shaped(fresh, out.ndim, 1))

    # -- functions and methods
    def call(self, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        tensors = _tensors(args) + _tensors(kwargs)
        if not _tensors(out) or name in _IGNORED:
            return
        if not any(self.lab(t) is not None for t in tensors):
            return  # nothing labelled flows through this op
        x = args[0] if args else None
        if name in _PASS_FUNCS or (name in ("float", "to", "type_as")):
            self.passthrough(x, out, name)
        elif name in _BINARY or name in ("where", "lerp", "addcmul"):
            self.elementwise(name, [a for a in args if isinstance(a, torch.Tensor)], out)
        elif name in _RESHAPE:
            self.reshape(x, out)
        elif name in _PERMUTE:
            self.permute(name, x, args[1:], kwargs, out)
        elif name in _CAT:
            self.cat(args[0] if args else kwargs["tensors"], _arg(args, kwargs, 1, "dim", 0), out)
        elif name in _SPLIT:
            self.split(x, _arg(args, kwargs, 2, "dim", 0) if name != "unbind" else _arg(args, kwargs, 1, "dim", 0),
                       out, name)
        elif name == "getitem" and isinstance(x, torch.Tensor):
            self.getitem(x, args[1], out)
        elif name == "getitem":
            return  # an element of a tuple: already labelled when the tuple was made
        elif name in _REDUCE:
            self.reduce(x, _arg(args, kwargs, 1, "dim", None), _arg(args, kwargs, 2, "keepdim", False), out, name)
        elif name == "pad":
            self.pad(x, _arg(args, kwargs, 1, "pad", ()), _arg(args, kwargs, 2, "mode", "constant"), out)
        elif name == "expand" or name == "expand_as":
            self.passthrough(x, out, name, allow_grow=True)
        else:
            for t in tensors:
                self.freeze(self.lab(t), f"op {name!r} is not understood: the channels it reads are left alone")
            for t in _tensors(out):
                self.labs.pop(id(t), None)

    def passthrough(self, x: Any, out: Any, what: str, allow_grow: bool = False) -> None:
        lab = self.lab(x)
        if lab is None or not isinstance(out, torch.Tensor):
            if lab is not None:
                self.freeze(lab, f"{what} returns no single tensor: channels left alone")
            return
        ok = out.ndim == lab.ndim and all(out.shape[d] == x.shape[d] for d in _varying(lab))
        if not ok:
            self.freeze(lab, f"{what} changes the shape along channels: left alone")
            return
        self.set(out, lab)

    def elementwise(self, name: str, operands: list[torch.Tensor], out: torch.Tensor) -> None:
        if not isinstance(out, torch.Tensor):
            return
        nd = out.ndim
        labs = [self.lab(t) for t in operands]
        aligned = [None if lb is None else lb.reshape((1,) * (nd - lb.ndim) + lb.shape) for lb in labs]
        vary = sorted({d for lb in aligned if lb is not None for d in _varying(lb)})
        if not vary:
            self.set(out, next(lb for lb in aligned if lb is not None))
            return
        vshape = tuple(out.shape[d] for d in vary)

        def restricted(lb: np.ndarray) -> np.ndarray:
            idx = tuple(slice(None) if d in vary else 0 for d in range(nd))
            return _full(lb[idx], vshape)

        base = None
        for t, lb in zip(operands, aligned):
            shape = (1,) * (nd - t.ndim) + tuple(t.shape)
            sizes = [shape[d] for d in vary]
            if all(s == 1 for s in sizes):
                continue  # broadcast along the channels: no coupling
            pname = self.params.get(id(t))
            if lb is None and pname is not None and len(vary) == 1 and sizes[0] > 1:
                continue  # a parameter indexed by the channels: recorded once base is known
            if lb is None or any(s == 1 for s in sizes):
                mine = np.full(vshape, -1, dtype=np.int64) if lb is None else restricted(lb)
                others = [restricted(o) for o in aligned if o is not None]
                for o in others:
                    self.freeze(o, f"{name} combines channels with a tensor that cannot be cut: left alone")
                self.freeze(mine, "")
                continue
            r = restricted(lb)
            if base is None:
                base = r
            else:
                self.unify(base, r)
        if base is None:
            for lb in aligned:
                self.freeze(lb, f"{name}: channels meet a fixed tensor: left alone")
            return
        for t, lb in zip(operands, aligned):
            pname = self.params.get(id(t))
            if lb is None and pname is not None:
                shape = (1,) * (nd - t.ndim) + tuple(t.shape)
                if len(vary) == 1 and shape[vary[0]] > 1:
                    self.use(pname, "param", base.ravel(), axis=vary[0] - (nd - t.ndim))
        shape = [1] * nd
        for d, s in zip(vary, vshape):
            shape[d] = s
        self.set(out, base.reshape(shape))

    def reshape(self, x: Any, out: Any) -> None:
        """Moves labels as the data moves; only merges (flatten) and size-1 dims are safe to cut.

        A reshape that splits the channel dim (a channel shuffle's ``view(n, g, c/g, h, w)``)
        bakes the channel count into the shape, so its channels are frozen instead.
        """
        lab = self.lab(x)
        if lab is None or not isinstance(out, torch.Tensor):
            return
        full = _full(lab.reshape((1,) * (x.ndim - lab.ndim) + lab.shape), tuple(x.shape))
        new = _compress(full.reshape(tuple(out.shape)))
        vin, vout = _varying(lab), _varying(new)
        if len(vin) == 1 and len(vout) == 1:
            a = self.along(lab, vin[0], x.shape[vin[0]])
            b = self.along(new, vout[0], out.shape[vout[0]])
            runs = b[np.r_[True, b[1:] != b[:-1]]]
            if len(runs) == len(a) and (runs == a).all():
                self.set(out, new)
                return
        self.freeze(lab, "a reshape splits or reorders channels (e.g. a channel shuffle): left alone")

    def permute(self, name: str, x: Any, rest: tuple, kwargs: dict, out: Any) -> None:
        lab = self.lab(x)
        if lab is None:
            return
        if name == "t":
            new = lab.T
        elif name in ("transpose", "swapaxes"):
            a, b = (list(rest) + [kwargs.get("dim0"), kwargs.get("dim1")])[:2]
            new = np.swapaxes(lab, a, b)
        elif name == "movedim":
            new = np.moveaxis(lab, rest[0], rest[1])
        else:
            dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
            dims = kwargs.get("dims", dims)
            new = np.transpose(lab, [d % lab.ndim for d in dims])
        self.set(out, np.ascontiguousarray(new))

    def cat(self, tensors: Any, dim: int, out: Any) -> None:
        parts = []
        for t in tensors:
            lb = self.lab(t)
            parts.append(np.full(tuple(t.shape), -1, dtype=np.int64) if lb is None else _full(lb, tuple(t.shape)))
        self.set(out, _compress(np.concatenate(parts, axis=dim)))

    def split(self, x: Any, dim: int, out: Any, name: str) -> None:
        """Splitting along channels uses sizes fixed at trace time (``chunk(2)`` halves): frozen."""
        lab = self.lab(x)
        dim = dim % x.ndim
        if dim in _varying(lab):
            self.freeze(lab, f"{name} along channels: left alone")
            return
        for t in _tensors(out):
            self.set(t, lab if lab.shape[dim] == 1 else None)

    def getitem(self, x: torch.Tensor, idx: Any, out: Any) -> None:
        lab = self.lab(x)
        if not isinstance(out, torch.Tensor):
            return
        items = idx if isinstance(idx, tuple) else (idx,)
        if any(isinstance(i, torch.Tensor) or isinstance(i, (list, np.ndarray)) for i in items):
            self.freeze(lab, "indexing by a tensor: channels left alone")
            return
        new = _compress(np.ascontiguousarray(_full(lab, tuple(x.shape))[idx]))
        if any(d < len(items) and items[d] != slice(None) for d in _varying(lab)) and Ellipsis not in items:
            self.freeze(lab, "slicing along channels: left alone")
            return
        self.set(out, new)

    def reduce(self, x: Any, dim: Any, keepdim: bool, out: Any, name: str) -> None:
        lab = self.lab(x)
        dims = list(range(x.ndim)) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
        dims = [d % x.ndim for d in dims]
        if any(d in _varying(lab) for d in dims):
            self.freeze(lab, f"{name} reduces over channels: left alone")
            return
        new = lab
        if not keepdim:
            new = np.squeeze(new, axis=tuple(dims))
        self.set(out, new)

    def pad(self, x: Any, pad: Any, mode: str, out: Any) -> None:
        """Padding along channels adds fixed (``-1``) channels; spatial padding leaves labels as they are."""
        lab = self.lab(x)
        widths = [(0, 0)] * x.ndim
        for i in range(len(pad) // 2):
            widths[x.ndim - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
        on_channels = [d for d in _varying(lab) if widths[d] != (0, 0)]
        if on_channels and (mode != "constant" or any(min(widths[d]) < 0 for d in on_channels)):
            self.freeze(lab, f"pad mode {mode!r} along channels: left alone")
            return
        widths = [w if d in on_channels else (0, 0) for d, w in enumerate(widths)]
        self.set(out, np.pad(lab, widths, constant_values=-1))

    # -- result
    def finish(self, out: Any, tracer: str) -> DependencyGraph:
        for t in _tensors(out):
            self.freeze(self.lab(t), "")
        root = self.uf.find
        frozen = {root(a) for a in self.frozen}
        # a grouped conv / group norm: which constraint, how many blocks, which block, where
        block_of: dict[int, tuple[int, int, int, int]] = {}
        bad: set[int] = set()
        for cid, (vec, nb) in enumerate(self.blocks):
            size = len(vec) // nb
            for i, a in enumerate(vec):
                if a >= 0:
                    r = root(int(a))
                    if block_of.setdefault(r, (cid, nb, i // size, i))[:3] != (cid, nb, i // size):
                        bad.add(r)  # two constraints disagree: left alone
        members: dict[int, list[tuple[str, int]]] = {}
        for a, pi in self.producer_of.items():
            members.setdefault(root(a), []).append(pi)
        order = {p: i for i, p in enumerate(self.out_atoms)}
        by_key: dict[Any, list[int]] = {}
        for r, mem in members.items():
            if r in frozen or r in bad:
                continue
            # atoms under one block constraint form one group (removal balanced across all blocks)
            key = ("blocks", block_of[r][0]) if r in block_of else tuple(sorted({p for p, _ in mem}, key=order.get))
            by_key.setdefault(key, []).append(r)
        groups = []
        for key, atoms in by_key.items():
            producers = tuple(sorted({p for r in atoms for p, _ in members[r]}, key=order.get))
            if key[0] == "blocks":
                nb = block_of[atoms[0]][1]
                atoms.sort(key=lambda r: block_of[r][3])
                counts = np.bincount([block_of[r][2] for r in atoms], minlength=nb)
                if len(set(counts.tolist())) != 1:
                    continue  # some channels of a block are frozen: removal could not stay balanced
            else:
                nb = 1
                atoms.sort(key=lambda r: min(i for p, i in members[r] if p == producers[0]))
            groups.append(ChannelGroup(producers, atoms, [sorted(members[r], key=lambda m: order[m[0]])
                                                          for r in atoms], nb))
        graph = DependencyGraph(self.uses, groups, root, tracer, list(self.notes))
        return graph


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def warn_unhandled(graph: DependencyGraph) -> None:
    """Emit the graph's notes (ops whose channels were left alone) as warnings."""
    for note in graph.warnings:
        warnings.warn(note, stacklevel=3)


__all__ = ["CHANNEL_LAYERS", "ChannelGroup", "DependencyGraph", "Use", "trace", "warn_unhandled"]
