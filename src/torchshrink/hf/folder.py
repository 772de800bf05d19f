"""Hugging Face / sentence-transformers folders on disk: check, open, copy, reopen.

Only local folders are read (``HF_HUB_OFFLINE=1`` is set before transformers is
imported, so nothing is ever downloaded). A compressed folder holds the same files as
the original except ``model.safetensors``, whose place the ``.tsk`` file takes; its
architecture (the transformers config) is stored as plain JSON inside the ``.tsk``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelError

#: The weights files a Hugging Face folder may hold; a compressed folder drops them.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
#: The name of the compressed weights inside a compressed folder.
TSK_NAME = "model.tsk"


def hide_broken_torchvision() -> None:
    """Make a torchvision whose compiled ops do not match torch look absent to transformers.

    transformers imports torchvision when it is installed; a build for another torch (a
    CUDA wheel beside a CPU torch) fails at import, which would break loading a text model
    that never needs it.
    """
    if "torchvision" in sys.modules and sys.modules["torchvision"] is None:
        return
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None  # type: ignore[assignment]  # find_spec now reports it absent


def sentence_transformers() -> Any:
    """The ``sentence_transformers`` package, imported offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    hide_broken_torchvision()
    try:
        import sentence_transformers as st
    except ImportError as exc:
        raise ModelError(f"compressing Hugging Face models needs sentence-transformers and transformers "
                         f"(pip install 'torchshrink[real]'): {exc}") from None
    return st


def check_folder(path: str | Path) -> Path:
    """``path`` as a folder holding a Hugging Face model (a ``config.json`` and weights), or a clear error."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder; give the local folder of a Hugging Face / "
                         "sentence-transformers model (nothing is downloaded).")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"{folder} is not a Hugging Face model folder: it has no config.json.")
    try:
        cfg = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise ModelError(f"{config} is not a transformers config (it has no 'model_type').")
    if not any((folder / w).is_file() for w in WEIGHT_FILES):
        raise ModelError(f"{folder} holds no weights ({' or '.join(WEIGHT_FILES[:2])}).")
    return folder


def open_model(path: str | Path) -> Any:
    """The ``SentenceTransformer`` of a local folder, on the CPU, in eval mode."""
    folder = check_folder(path)
    st = sentence_transformers()
    try:
        model = st.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot open {folder} as a sentence-transformers model: {exc}") from None
    return model.eval()


def transformer_of(model: Any) -> Any:
    """The transformers model (``BertModel``, ...) inside a ``SentenceTransformer``."""
    first = model[0]
    inner = getattr(first, "auto_model", None) or getattr(first, "model", None)
    if inner is None:
        raise ModelError("the sentence-transformers model's first module holds no transformers model")
    return inner


def copy_configs(source: Path, out: Path) -> list[str]:
    """Copy every file of ``source`` but the weights into ``out`` (tokenizer, pooling, configs)."""
    copied = []
    for item in sorted(source.rglob("*")):
        rel = item.relative_to(source)
        if item.is_dir() or rel.name in WEIGHT_FILES or rel.parts[0].startswith("."):
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(item, out / rel)
        copied.append(str(rel))
    return copied


@contextlib.contextmanager
def folder_with_weights(out: Path, state: dict[str, Any]):
    """A temporary copy of the compressed folder ``out`` with ``state`` as ``model.safetensors``.

    sentence-transformers builds its modules from a folder with weights; the decoded
    weights are written there (safetensors, no code) and the folder removed afterwards.
    """
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="torchshrink-hf-") as tmp:
        tmp_path = Path(tmp)
        copy_configs(out, tmp_path)
        (tmp_path / TSK_NAME).unlink(missing_ok=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
        yield tmp_path
