"""Measured per-layer dispatch: a packed layer runs its kernel or its decoded dense twin, whichever is faster.

A compressed kernel is not faster everywhere: a 4-bit sparse kernel beats dense BLAS on
a large layer at batch 1 (it reads a tenth of the bytes), but on a LeNet-size layer at
batch 64 dense ``F.linear`` wins, and the call overhead of any kernel launched from
Python is larger than a tiny layer's arithmetic. So each runtime module keeps the
decoded dense layer beside its kernel and runs, per input shape, the path that was
measured faster *on this machine*. Both paths compute the same function (the kernel
equals its decoded twin within float32 rounding), so the choice changes speed only.

The contract (any runtime module gets it without code of its own):

* a module that runs a packed layer and reports ``weight_bytes`` (what
  :func:`~torchshrink.runtime.modules.runtime_layers` counts) is a *runtime layer*;
* :func:`attach_twin` gives it its dense twin (the plain layer with the decoded
  weights, kept outside the module tree so ``parameters()`` and ``state_dict()`` are
  unchanged) and the layer name; modules built on :class:`Dispatching`
  (``CompressedLinear``, ``CompressedConv2d``, ``FusedSharedMLP``, and anything
  :func:`~torchshrink.runtime.modules.compressed_layer` returns) dispatch in their own
  ``forward``; any other runtime module is wrapped in :class:`Dispatched`;
* the first call with an input shape not yet decided times both paths on that input
  (interleaved rounds, medians), unless the on-disk cache holds a decision for it that
  a quick re-timing at load confirms (:mod:`.decisions`: only decisions whose margin
  exceeds their noise are cached, and a cached one that no longer holds is dropped).

The cache is one JSON file per machine fingerprint (CPU model, cores, thread counts),
stamped with the software (torch / numba / torchshrink versions, the runtime's source),
under :func:`torchshrink.cache_dir.cache_root`, keyed by the layer's signature (module
and kernel class, weight shape, nonzeros, kernel bytes) and the input shape. :func:`calibrate` decides every layer for the batch sizes asked (``load`` calls
it for a zoo model's input shape at batch 1 and 64); :func:`paths` lists the decisions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from . import decisions
from .decisions import (  # noqa: F401 - the cache and timing helpers, re-exported for callers and tests
    KERNEL_MARGIN,
    PATHS,
    _loaded_from,
    cache_path,
    clear_cache,
    fingerprint,
    stamp,
    time_paths,
)


class Dispatching(nn.Module):
    """Base of runtime modules that choose, per input shape, between their kernel and a dense twin.

    Subclasses implement :meth:`run_kernel` and return :meth:`dispatch` from ``forward``.
    Until :func:`attach_twin` gives the module its twin it always runs the kernel. The
    twin, the decisions and the per-shape routes live in ``__dict__`` (not the module
    tree): ``parameters()`` and ``state_dict()`` stay those of the kernel.
    """

    layer_name: str = ""
    forced: str | None = None

    def run_kernel(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def dense_twin(self) -> nn.Module | None:
        twin = self.__dict__.get("_twin")
        return twin[0] if twin else None

    @property
    def decisions(self) -> dict[tuple[int, ...], dict[str, Any]]:
        """Input shape -> ``{"path", "kernel_ms", "dense_ms", "cached"}`` for every shape decided."""
        return self.__dict__.setdefault("_decisions", {})

    def signature(self) -> str:
        """What makes two layers time alike: classes, weight shape, nonzeros, kernel bytes."""
        twin = self.dense_twin
        w = getattr(twin, "weight", None)
        if isinstance(w, torch.Tensor):
            shape, nnz = list(w.shape), int(torch.count_nonzero(w))
        else:
            params = [] if twin is None else list(twin.parameters())
            shape, nnz = [sum(p.numel() for p in params)], sum(int(torch.count_nonzero(p)) for p in params)
        inner = getattr(self, "weight_", None)
        if inner is None:
            inner = getattr(self, "inner", None)
        return f"{type(self).__name__}/{type(inner).__name__}/{shape}/{nnz}/{getattr(self, 'weight_bytes', 0)}"

    def path_for(self, x: torch.Tensor) -> str:
        """The path this input's shape runs, deciding it now (cache, else timing) if it is new."""
        if self.forced is not None:
            return self.forced
        twin = self.dense_twin
        if twin is None:
            return "kernel"
        shape = tuple(x.shape)
        got = self.decisions.get(shape)
        if got is not None:
            return got["path"]
        key = f"{self.signature()}|{list(shape)}|{x.dtype}"
        entry = decisions.cached(key)
        if entry is not None:
            check = decisions.holds(entry, self.run_kernel, twin, x)
            if check.pop("holds"):
                self.decisions[shape] = {**entry, "cached": True, "verified": check}
                return entry["path"]
        entry = decisions.verdict(time_paths(self.run_kernel, twin, x))
        if entry["clear"]:
            decisions.store(key, entry)
        else:
            decisions.forget(key)  # a stale entry, or one the new timing cannot confirm
        self.decisions[shape] = {**entry, "cached": False}
        return entry["path"]

    def _dense_route(self) -> Any:
        return self.dense_twin

    def dispatch(self, x: torch.Tensor) -> torch.Tensor:
        """Run ``x`` through the path measured faster for its shape (one dict lookup once decided)."""
        routes = self.__dict__.setdefault("_routes", {})
        fn = routes.get(x.shape)
        if fn is None:
            if torch.is_grad_enabled() and x.requires_grad and self.dense_twin is not None:
                return self.dense_twin(x)  # kernels are inference-only: autograd goes through the decoded layer
            fn = self._dense_route() if self.path_for(x) == "dense" else self.run_kernel
            routes[x.shape] = fn
        return fn(x)


class Dispatched(Dispatching):
    """Measured dispatch around a runtime module that has none of its own (``inner``)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def run_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dispatch(x)

    @property
    def weight_bytes(self) -> int:
        return self.inner.weight_bytes


class RuntimeModel(Dispatching):
    """A whole loaded model: its runtime layers (``inner``), or the decoded dense model where that is faster.

    The per-layer choices already make each layer no slower than its dense twin; this
    last choice also removes the per-layer Python overhead where every layer would run
    dense anyway (a LeNet at batch 64). Attributes it lacks are looked up on ``inner``
    (``fast.fc1`` works as on the plain model).
    """

    def __init__(self, inner: nn.Module, dense: nn.Module, settled: list[tuple[str, dict]] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.__dict__["_twin"] = [dense.eval()]
        self.__dict__["settled"] = list(settled or [])  # layers :func:`settle` gave back to their twin
        self.layer_name = WHOLE_MODEL

    def run_kernel(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dispatch(x)

    def _dense_route(self) -> Any:
        twin = self.dense_twin  # its forward directly: no second nn.Module call on the dense path
        return twin.forward if not (twin._forward_hooks or twin._forward_pre_hooks) else twin

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = (self.__dict__.get("_modules") or {}).get("inner")
            if inner is None or name.startswith("__"):
                raise
            return getattr(inner, name)

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """The decided route for ``x``'s shape, called directly: the wrapper costs one dict lookup.

        Anything unusual (more arguments, hooks on this module, a new shape) takes the
        ordinary ``nn.Module`` call.
        """
        if args or kwargs or not isinstance(x, torch.Tensor) or self._forward_hooks or self._forward_pre_hooks:
            return super().__call__(x, *args, **kwargs)
        fn = self.__dict__["_routes"].get(x.shape) if "_routes" in self.__dict__ else None
        return fn(x) if fn is not None else super().__call__(x)

    def __getitem__(self, idx: Any) -> Any:
        return self.inner[idx]

    def __len__(self) -> int:
        return len(self.inner)


def unwrap_runtime(model: nn.Module) -> nn.Module:
    """The runtime layers of a loaded model (``inner`` of a :class:`RuntimeModel`), else ``model``."""
    return model.inner if isinstance(model, RuntimeModel) else model


#: The layer names of the whole-model and the fused-chain decisions in :func:`paths`.
WHOLE_MODEL = "(whole model)"
FUSED = "(fused chain)"


def settle(model: nn.Module, settled: list[tuple[str, dict]] | None = None) -> nn.Module:
    """``model`` with every dispatching layer that chose dense for every shape decided replaced by its twin.

    Run after :func:`calibrate`: such a layer would only add a dispatch call per
    forward. Layers with no decision yet, or a kernel decision for some shape, stay.
    ``settled`` (if given) receives ``(layer name, decisions)`` of each layer replaced.
    """
    for name, m in list(model.named_modules()):
        if not isinstance(m, Dispatching) or isinstance(m, RuntimeModel) or m.dense_twin is None:
            continue
        if not m.decisions or any(d["path"] != "dense" for d in m.decisions.values()):
            continue
        if settled is not None:
            settled.append((m.layer_name or name, dict(m.decisions)))
        parent, _, child = name.rpartition(".")
        if not child:
            return m.dense_twin
        setattr(model.get_submodule(parent) if parent else model, child, m.dense_twin)
    return model


def attach_twin(module: nn.Module, twin: nn.Module, name: str) -> nn.Module:
    """``module`` (a runtime layer) with its dense ``twin`` attached; wrapped in :class:`Dispatched` if needed.

    A module that is no runtime layer (reports no ``weight_bytes``) is returned unchanged.
    """
    if not hasattr(module, "weight_bytes"):
        return module
    if not isinstance(module, Dispatching):
        module = Dispatched(module)
    twin = twin.eval()
    module.__dict__["_twin"] = [twin]  # outside the module tree: no parameters, no state_dict entries
    module.__dict__["_decisions"] = {}
    module.__dict__["_routes"] = {}
    module.layer_name = name
    return module


def dispatching(model: nn.Module) -> list[tuple[str, Dispatching]]:
    """Every dispatching module of ``model`` and of the dense twins it holds, with its layer name."""
    out: list[tuple[str, Dispatching]] = []
    seen: set[int] = set()

    def walk(root: nn.Module) -> None:
        for name, m in root.named_modules():
            if id(m) in seen or not isinstance(m, Dispatching):
                continue
            seen.add(id(m))
            out.append((m.layer_name or name, m))
            twin = m.dense_twin
            if twin is not None:
                walk(twin)  # a fused chain's twin is the per-layer runtime model

    walk(model)
    return out


def drop_twins(model: nn.Module) -> int:
    """Drop the dense twin of every dispatching module of ``model`` that chose its kernel for every shape decided.

    Outermost first (the whole model, a fused chain, then layers), so a twin that holds
    further twins goes with them. A module with no decision yet, or a dense decision for
    some shape, keeps its twin. Afterwards such a module runs its kernel for every shape,
    and under autograd too (its kernel is inference-only). Returns how many were dropped.
    """
    dropped = 0
    for _, m in dispatching(model):  # outermost first: dispatching() walks the tree, then each twin
        if m.dense_twin is None or not m.decisions or any(d["path"] != "kernel" for d in m.decisions.values()):
            continue
        m.__dict__["_twin"] = None
        m.__dict__["_routes"] = {}
        dropped += 1
    return dropped


def force(model: nn.Module, path: str | None) -> nn.Module:
    """Make every dispatching layer of ``model`` run ``path`` (``"kernel"``, ``"dense"``; None: measured)."""
    if path is not None and path not in PATHS:
        raise ModelError(f"The 'path' parameter must be one of {list(PATHS)} or None. Got {path!r}.")
    for _, m in dispatching(model):
        m.forced = path
        m.__dict__["_routes"] = {}
    return model


def calibrate(model: nn.Module, input_shape: Sequence[int], batches: Iterable[int] = (1, 64)) -> nn.Module:
    """Decide every dispatching layer for each batch size: one forward pass per batch on a normal input.

    Each layer times its two paths on the input it actually receives (or reads the
    decision from the cache). Returns ``model``.
    """
    gen = torch.Generator().manual_seed(0)
    was = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for b in batches:
                model(torch.randn((int(b), *input_shape), generator=gen))
    finally:
        model.train(was)
    return model


def layer_counts(layer_paths: dict[str, str]) -> tuple[int, int]:
    """``(kernel, dense)``: how many layers of a :func:`path_at` map run a kernel (or a fused program) and dense.

    The whole-model and fused-chain entries (names in parentheses) are not layers.
    """
    layers = [p for name, p in layer_paths.items() if not name.startswith("(")]
    return sum(p in ("kernel", "fused") for p in layers), sum(p == "dense" for p in layers)


def paths(model: nn.Module) -> list[dict[str, Any]]:
    """One row per (layer, input shape) decided: ``layer, batch, input_shape, path, kernel_ms, dense_ms, cached``."""
    rows = []
    for name, m in dispatching(model):
        decided = [(name, m.decisions, m.forced)]
        decided += [(n, d, None) for n, d in m.__dict__.get("settled", [])]  # a RuntimeModel's settled layers
        for layer, decided_by_shape, forced in decided:
            for shape, d in decided_by_shape.items():
                rows.append({"layer": layer, "batch": shape[0] if shape else 1, "input_shape": list(shape),
                             "path": forced or d["path"], "kernel_ms": d.get("kernel_ms"),
                             "dense_ms": d.get("dense_ms"), "cached": bool(d.get("cached"))})
    return rows


def path_at(model: nn.Module, batch: int) -> dict[str, str]:
    """Layer name -> the path it runs at ``batch`` (first input shape decided with that batch).

    Where the whole model runs its decoded dense twin every layer reads ``"dense"``, and
    where a fused chain runs its kernel every layer of it reads ``"fused"``.
    """
    out: dict[str, str] = {}
    for row in paths(model):
        if row["batch"] == batch:
            out.setdefault(row["layer"], row["path"])
    if out.get(WHOLE_MODEL) == "dense":
        return {k: "dense" for k in out}
    if out.get(FUSED) == "kernel":
        return {k: v if k.startswith("(") else "fused" for k, v in out.items()}
    return out
