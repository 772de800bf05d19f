"""Unlabeled calibration text, and what the model does with it.

* :func:`read_sentences`: one sentence a line (blank lines skipped), with clear errors.
* :func:`default_calibration`: the English text shipped with torchshrink
  (``torchshrink/data/calibration_en.txt``).
* :func:`embed`: sentence embeddings of pre-tokenized batches.
* :func:`input_hessians`: ``H = XᵀX`` of the inputs each chosen ``nn.Linear`` sees
  (forward hooks; padding tokens left out), the statistic response-aware quantization needs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DataError

CALIBRATION = "calibration_en.txt"
BATCH = 32


class _Enough(Exception):
    """Raised by a hook to end a forward pass once every wanted input has been seen."""


def read_sentences(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"sentence file {p} does not exist")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {p} as UTF-8 text: {exc}") from None
    sentences = [s.strip() for s in lines if s.strip()]
    if not sentences:
        raise DataError(f"sentence file {p} is empty (it needs one sentence a line)")
    return sentences


def default_calibration() -> Path:
    """The path of the calibration text shipped inside the package."""
    return Path(str(resources.files("torchshrink.data").joinpath(CALIBRATION)))


def batches(model: Any, sentences: Sequence[str], size: int = BATCH) -> list[dict[str, torch.Tensor]]:
    """Tokenized batches of ``sentences`` (the model's own preprocessing), made once."""
    return [model.preprocess(list(sentences[i:i + size])) for i in range(0, len(sentences), size)]


@torch.no_grad()
def embed(model: Any, feats: Iterable[dict[str, torch.Tensor]]) -> torch.Tensor:
    """The sentence embeddings (float32, one row per sentence) of tokenized batches."""
    return torch.cat([model(dict(f))["sentence_embedding"].float() for f in feats])


@torch.no_grad()
def input_hessians(model: Any, feats: Sequence[dict[str, torch.Tensor]],
                   layers: dict[str, nn.Linear], *, stop: bool = False) -> dict[str, torch.Tensor]:
    """``{name: XᵀX}`` (float64) over the non-padding tokens each of ``layers`` receives.

    ``stop=True`` ends each batch's forward pass as soon as every layer has seen its input
    (each layer must then be called once per forward pass).
    """
    out = {n: torch.zeros(m.in_features, m.in_features, dtype=torch.float64) for n, m in layers.items()}
    mask: list[torch.Tensor] = []
    seen: set[str] = set()

    def hook(name: str):
        def collect(_m: nn.Module, args: tuple, _out: Any) -> None:
            x = args[0].detach()
            keep = mask[0].reshape(-1) if mask and mask[0].numel() * x.shape[-1] == x.numel() else None
            x = x.reshape(-1, x.shape[-1])
            if keep is not None:
                x = x[keep]
            x = x.to(torch.float64)
            out[name] += x.T @ x
            seen.add(name)
            if stop and len(seen) == len(out):
                raise _Enough
        return collect

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        for f in feats:
            mask[:] = [f["attention_mask"].bool()] if "attention_mask" in f else []
            seen.clear()
            try:
                model(dict(f))
            except _Enough:
                pass
    finally:
        for h in handles:
            h.remove()
    return out
