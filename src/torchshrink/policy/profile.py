"""The per-layer, per-setting table a policy searches: damage measured, costs measured.

For every selected layer and every :class:`~.settings.Setting`, the layer alone is
compressed on a copy of the model (one shot, no retraining) and

* **damage** -- the increase of the mean cross-entropy on a held-back part of the
  *training* split (never the test split), with the accuracy beside it;
* **bytes** -- the layer's weight and bias encoded for real by the ``.tsk`` writer
  (:func:`torchshrink.format.encoded_bytes`: the same forms, codecs and Huffman choice as
  ``save``);
* **energy_uj** -- the 45 nm estimate of :func:`torchshrink.measure.energy_estimate` for
  the layer alone: its nonzero MACs (EIE skips pruned weights) and its stored bytes;
* **latency_ms** (when asked) -- the layer's runtime module (its form's kernel, as
  ``load`` builds it) timed on this machine at batch 1, cached per machine fingerprint
  (:mod:`.latency`).

Under ``torchrun`` the (layer, setting) items are split across ranks and gathered, and
the table is the same as one rank's: every item is a deterministic function of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from rich.progress import Progress
from torch import nn
from torch.utils.data import Dataset, Subset

from ..core.params import FRACTION, check
from ..core.select import tensor_key
from ..errors import RecipeError
from ..factorize.svd import resolve_rank
from ..format import encoded_bytes
from ..measure import energy_estimate, layer_stats
from ..train import distributed_env, evaluate, init_distributed
from .settings import Setting, applicable, applied, parts

T = TypeVar("T")
R = TypeVar("R")

#: Decimal digits kept of measured floats, so that tables from any number of ranks compare equal.
DIGITS = 9


@dataclass(frozen=True)
class Entry:
    """One (layer, setting) cell of the table."""

    layer: str
    sparsity: float
    bits: int | None
    bytes: int
    damage: float
    loss: float
    accuracy: float
    energy_uj: float
    latency_ms: float | None = None
    rank: float | None = None

    @property
    def setting(self) -> Setting:
        return Setting(self.sparsity, self.bits, self.rank)


def holdout(train: Dataset, fraction: float, seed: int = 0) -> Subset:
    """A fixed random ``fraction`` of the training split (at least one example)."""
    check(fraction, "holdout", "policy", FRACTION)
    n = len(train)
    k = max(1, round(fraction * n))
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k]
    return Subset(train, sorted(idx.tolist()))


def layer_tensors(model: nn.Module, name: str) -> list[str]:
    """The state-dict keys a layer's setting changes: its weight and (if any) bias (of both factors, once factorized)."""
    keys = []
    for part in parts(model, name):
        keys.append(tensor_key(part, "weight"))
        if getattr(model.get_submodule(part), "bias", None) is not None:
            keys.append(tensor_key(part, "bias"))
    return keys


def profile(
    model: nn.Module,
    held: Dataset,
    names: Sequence[str],
    settings: Sequence[Setting],
    input_shape: Sequence[int],
    *,
    include_bias: bool = False,
    latency: bool = False,
    progress: bool = True,
) -> list[Entry]:
    """Measure every (layer, setting) of ``names`` x ``settings``; see the module doc."""
    base = evaluate(model, held)["loss"]
    macs = {s.name: s.macs_dense for s in layer_stats(model, input_shape)}
    items = [(n, s) for n in names for s in settings if applicable(model.get_submodule(n), s)]
    if latency and any(s.rank is not None for _, s in items):
        raise RecipeError("policy: a rank grid cannot be priced by latency yet; use a bytes or energy budget")
    timer = None
    if latency:
        from .latency import LayerTimer

        timer = LayerTimer(model, input_shape)

    def one(item: tuple[str, Setting]) -> Entry:
        name, setting = item
        trial = applied(model, {name: setting}, include_bias=include_bias)
        ev = evaluate(trial, held)
        nbytes = sum(encoded_bytes(trial, layer_tensors(trial, name)).values())
        dense_macs = sum(macs.get(p, 0) for p in parts(model, name))
        if setting.rank is not None:  # in -> r -> out: r (m + n) MACs per position instead of m n
            w = model.get_submodule(name).weight
            r = resolve_rank(setting.rank, *w.shape)
            dense_macs *= r * (w.shape[0] + w.shape[1]) / w.numel()
        nz_macs = int(round(dense_macs * (1.0 - setting.sparsity)))
        return Entry(
            layer=name, sparsity=setting.sparsity, bits=setting.bits, bytes=nbytes,
            damage=round(ev["loss"] - base, DIGITS), loss=round(ev["loss"], DIGITS),
            accuracy=ev["accuracy"], energy_uj=round(energy_estimate(nz_macs, nbytes)["total_uj"], DIGITS),
            latency_ms=None if timer is None else timer.time(trial, name), rank=setting.rank,
        )

    return measured(items, one, description="policy: measuring layers x settings", progress=progress)


def measured(items: Sequence[T], measure: Callable[[T], R], *, description: str, progress: bool = True) -> list[R]:
    """``[measure(item) for item in items]``, the items split across ``torchrun`` ranks and gathered.

    Every rank returns the same list as one rank would, provided ``measure`` is a
    deterministic function of its item (round measured floats to :data:`DIGITS`).
    """
    rank, world = distributed_env()
    if world > 1:
        rank, world = init_distributed(torch.device("cpu"))
    rows: dict[int, R] = {}
    mine = list(range(rank, len(items), world))
    with Progress(transient=True, disable=not progress or rank != 0) as bar:
        task = bar.add_task(description, total=len(mine))
        for i in mine:
            rows[i] = measure(items[i])
            bar.advance(task)
    if world > 1:
        gathered: list[dict[int, R] | None] = [None] * world
        dist.all_gather_object(gathered, rows)
        rows = {i: e for part in gathered for i, e in (part or {}).items()}
    return [rows[i] for i in range(len(items))]


def table_dicts(entries: Sequence[Entry]) -> list[dict]:
    """The table as JSON-ready dicts (for ``report.json``)."""
    return [asdict(e) for e in entries]
