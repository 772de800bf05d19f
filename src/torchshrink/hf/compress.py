"""Post-training compression of a sentence-transformers model to a file-size ratio.

Steps (no labels; objective = fidelity of the sentence embeddings to the original's):

1. **Calibration.** The calibration sentences are split: three quarters *fit* (inputs
   of every ``nn.Linear`` collected as ``H = XᵀX``), one quarter *held back* (damage).
2. **Sensitivity and cost per layer and bit width.** Each linear layer is quantized
   alone by GPTQ onto a per-row grid (:mod:`.gptq`); the embedding tables (a lookup, so
   the weight error is the objective) by plain per-row rounding. Cost = the tensor's
   encoded bytes (the ``rowgrid`` form, Huffman-coded codes when smaller); damage = the
   mean ``1 − cos`` between the original and the perturbed model's embeddings of the
   held-back sentences.
3. **Mixed precision by search.** The exact multiple-choice knapsack of
   :mod:`torchshrink.policy.search` picks one width per layer with the least summed
   damage whose bytes fit ``dense_bytes / ratio`` (minus the tensors kept as they are
   and the file's header).
4. **Quantization with error correction** (Wu et al. 2016, "Q-CNN", §3.3): layer by
   layer in forward order, each linear layer's ``H`` is collected again on inputs that
   passed through the already-quantized earlier layers, then GPTQ runs at its chosen width.

If the written file misses the ratio (codes after error correction entropy-code a
little differently than in step 2), the budget is lowered by the miss and steps 3–4
rerun (at most :data:`RETRIES` times).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ModelError, RecipeError
from ..format.streams import Options
from ..forms.rowgrid import RowGrid
from ..policy.search import Option, knapsack
from .calibration import batches, default_calibration, embed, input_hessians, read_sentences
from .folder import open_model, transformer_of
from .gptq import GridWeight, decoded, gptq, round_to_grid

#: Bit widths the search may give a linear layer, and an embedding table.
LINEAR_BITS = (3, 4, 5, 6, 8)
EMBEDDING_BITS = (2, 3, 4, 5, 6, 8)
#: Embedding tables quantized (others, e.g. the 2-row token types, stay dense).
EMBEDDINGS = ("word_embeddings", "position_embeddings")
MIN_SENTENCES = 8
RETRIES = 3


@dataclass
class Compressed:
    """The result of :func:`compress_hf`: a model whose quantized layers carry their packed form."""

    st_model: Any
    source: Path
    dense_bytes: int
    budget: int
    bits: dict[str, int]
    predicted: dict[str, tuple[int, float]] = field(default_factory=dict)  # name -> (bytes, damage)

    @property
    def transformer(self) -> nn.Module:
        return transformer_of(self.st_model)


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the fp32 ``state_dict`` (every floating tensor at 4 bytes an element)."""
    return sum(4 * t.numel() for t in model.state_dict().values() if t.is_floating_point())


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _targets(bert: nn.Module) -> dict[str, nn.Module]:
    """The layers quantized, in forward order: the embedding tables, then every linear layer."""
    out: dict[str, nn.Module] = {}
    for name, m in bert.named_modules():
        if isinstance(m, nn.Embedding) and name.rsplit(".", 1)[-1] in EMBEDDINGS:
            out[name] = m
        elif isinstance(m, nn.Linear):
            out[name] = m
    if not any(isinstance(m, nn.Linear) for m in out.values()):
        raise ModelError("the model has no nn.Linear layers to quantize")
    return out


def _cost(packed: dict) -> int:
    return RowGrid().plan(packed, Options())[0]


def _damage(ref: torch.Tensor, emb: torch.Tensor) -> float:
    return float((1 - torch.nn.functional.cosine_similarity(ref, emb, dim=1)).mean())


def _track(items: Sequence[Any], label: str, progress: bool) -> Any:
    if not progress:
        return items
    from rich.progress import track

    return track(items, description=label, transient=True)


@torch.no_grad()
def _sensitivity(st_model: Any, targets: dict[str, nn.Module], fit: list, held: list, ref: torch.Tensor,
                 progress: bool) -> dict[str, list[Option]]:
    linears = {n: m for n, m in targets.items() if isinstance(m, nn.Linear)}
    hessians = input_hessians(st_model, fit, linears)
    options: dict[str, list[Option]] = {}
    for name in _track(list(targets), "sensitivity", progress):
        layer = targets[name]
        w = layer.weight.detach().clone()
        opts = []
        for bits in (LINEAR_BITS if name in linears else EMBEDDING_BITS):
            with _threads(1):
                packed = gptq(w, hessians[name], bits) if name in linears else round_to_grid(w, bits)
            layer.weight.copy_(decoded(packed))
            opts.append(Option(bits, _cost(packed), _damage(ref, embed(st_model, held))))
        layer.weight.copy_(w)
        options[name] = opts
    return options


def _groups(targets: dict[str, nn.Module]) -> list[list[str]]:
    """Targets in forward order, consecutive linear layers of one parent (query, key, value) together:
    they read the same input, so one pass collects it for all of them."""
    groups: list[list[str]] = []
    for name, layer in targets.items():
        parent = name.rpartition(".")[0]
        if (groups and isinstance(layer, nn.Linear) and isinstance(targets[groups[-1][-1]], nn.Linear)
                and groups[-1][-1].rpartition(".")[0] == parent):
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups


@torch.no_grad()
def _quantize(st_model: Any, targets: dict[str, nn.Module], originals: dict[str, torch.Tensor],
              bits: dict[str, int], fit: list, progress: bool) -> dict[str, dict]:
    """Quantize every target at its width in forward order, each on inputs through the quantized ones before it."""
    packed: dict[str, dict] = {}
    for group in _track(_groups(targets), "quantize", progress):
        linears = {n: targets[n] for n in group if isinstance(targets[n], nn.Linear)}
        hessians = input_hessians(st_model, fit, linears, stop=True) if linears else {}
        for name in group:
            layer = targets[name]
            if name in hessians:
                with _threads(1):
                    packed[name] = gptq(originals[name], hessians[name], bits[name])
            else:
                packed[name] = round_to_grid(originals[name], bits[name])
            layer.weight.copy_(decoded(packed[name]))
    return packed


def _file_bytes(bert: nn.Module) -> int:
    from ..format import save

    with tempfile.TemporaryDirectory(prefix="torchshrink-hf-") as tmp:
        return save(bert, Path(tmp) / "probe.tsk").file_bytes


def attach_packed(targets: dict[str, nn.Module], packed: dict[str, dict]) -> None:
    """Give each quantized layer a :class:`GridWeight` transform holding its packed value."""
    for name, p in packed.items():
        parametrize.register_parametrization(targets[name], "weight", GridWeight(p))


@torch.no_grad()
def detach_packed(targets: dict[str, nn.Module], originals: dict[str, torch.Tensor]) -> None:
    """Remove the transforms :func:`attach_packed` added and put the original weights back."""
    for name, layer in targets.items():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
        layer.weight.copy_(originals[name])


@dataclass
class Calibrated:
    """What :func:`calibrate_hf` measured once for any ratio: the model, its targets, the option table."""

    st_model: Any
    source: Path
    targets: dict[str, nn.Module]
    originals: dict[str, torch.Tensor]
    fit: list
    options: dict[str, list[Option]]
    dense_bytes: int
    rest_bytes: int  # the tensors stored as they are (biases, layer norms, small tables)


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) or ratio <= 1:
        raise ModelError(f"The ratio must be a number greater than 1. Got {ratio!r}.")
    return float(ratio)


def calibrate_hf(path: str | Path, calibration: str | Path | None = None, *, progress: bool = False) -> Calibrated:
    """Steps 1-2: open the folder, read the calibration text, measure every layer's (bytes, damage) per width."""
    sentences = read_sentences(calibration if calibration is not None else default_calibration())
    if len(sentences) < MIN_SENTENCES:
        raise ModelError(f"the calibration text needs at least {MIN_SENTENCES} sentences. Got {len(sentences)}.")
    st_model = open_model(path)
    bert = transformer_of(st_model)
    targets = _targets(bert)
    held_out = set(range(0, len(sentences), 4))
    fit = batches(st_model, [s for i, s in enumerate(sentences) if i not in held_out])
    held = batches(st_model, [sentences[i] for i in sorted(held_out)])
    ref = embed(st_model, held)
    originals = {n: m.weight.detach().clone() for n, m in targets.items()}
    options = _sensitivity(st_model, targets, fit, held, ref, progress)
    rest = sum(4 * t.numel() for n, t in bert.state_dict().items()
               if n.rsplit(".", 1)[0] not in targets or not n.endswith(".weight"))
    return Calibrated(st_model, Path(path), targets, originals, fit, options, dense_bytes(bert), rest)


def compress_calibrated(cal: Calibrated, ratio: float, *, progress: bool = False) -> Compressed:
    """Steps 3-4 for one ``ratio`` (the model of ``cal`` is changed in place; call again for another ratio)."""
    ratio = _check_ratio(ratio)
    bert = transformer_of(cal.st_model)
    target = int(cal.dense_bytes / ratio)
    budget = target - cal.rest_bytes - 64 * len(cal.targets)  # a first guess at the header; corrected below
    size = 0
    for _ in range(RETRIES + 1):
        try:
            choice, _front = knapsack(cal.options, budget)
        except RecipeError as exc:  # even the smallest widths do not fit
            raise ModelError(f"cannot reach the ratio {ratio:g}: {exc}") from None
        bits = {n: int(o.key) for n, o in choice.picks.items()}
        detach_packed(cal.targets, cal.originals)
        packed = _quantize(cal.st_model, cal.targets, cal.originals, bits, cal.fit, progress)
        attach_packed(cal.targets, packed)
        size = _file_bytes(bert)
        if size <= target:
            break
        budget -= size - target + 4096
    else:
        raise ModelError(f"cannot reach the ratio {ratio:g}: the smallest file found has {size} bytes "
                         f"({cal.dense_bytes / size:.2f}x)")
    predicted = {n: (int(o.cost), float(o.damage)) for n, o in choice.picks.items()}
    return Compressed(cal.st_model, cal.source, cal.dense_bytes, target, bits, predicted)


def compress_hf(path: str | Path, ratio: float, calibration: str | Path | None = None, *,
                progress: bool = False) -> Compressed:
    """Compress the sentence-transformers folder ``path`` so its ``.tsk`` is ``ratio``× smaller than fp32.

    ``calibration``: a text file, one sentence a line (default: the English text shipped
    with torchshrink). Returns the model with every quantized layer carrying its packed
    form (save it with :func:`torchshrink.hf.save_compressed`).
    """
    ratio = _check_ratio(ratio)
    return compress_calibrated(calibrate_hf(path, calibration, progress=progress), ratio, progress=progress)
