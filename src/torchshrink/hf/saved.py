"""Writing a compressed Hugging Face model as a folder, and loading it back.

A compressed folder = the original folder's tokenizer and sentence-transformers files
(``modules.json``, ``1_Pooling/``, ...) + ``model.tsk`` in place of ``model.safetensors``.
The ``.tsk`` records the transformers config as plain JSON in its architecture
(``zoo_spec = {"kind": "transformers", "config": {...}}``); loading builds the model
from that config (transformers' own ``from_config``: no code from the file runs) and fills
it with the decoded weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelError
from ..format.errors import TskFormatError
from .compress import Compressed
from .folder import TSK_NAME, copy_configs, folder_with_weights, sentence_transformers

KIND = "transformers"


def hf_spec(model: nn.Module) -> dict[str, Any]:
    """The architecture a ``.tsk`` records for a transformers model: its config as JSON."""
    return {"kind": KIND, "config": json.loads(model.config.to_json_string(use_diff=False))}


def save_compressed(result: Compressed, out: str | Path) -> Any:
    """Write ``out/`` (configs + ``model.tsk``) for a :func:`~torchshrink.hf.compress_hf` result.

    Returns the :class:`~torchshrink.format.SaveInfo` of the ``.tsk``.
    """
    from ..format import save

    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ModelError(f"--out {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    copy_configs(result.source, folder)
    bert = result.transformer
    bert.zoo_spec = hf_spec(bert)
    try:
        return save(bert, folder / TSK_NAME)
    finally:
        del bert.zoo_spec


def is_hf_file(spec: Any) -> bool:
    return isinstance(spec, dict) and spec.get("kind") == KIND


def _transformer(spec: dict[str, Any]) -> nn.Module:
    """An untrained transformers model built from a recorded config (validated by transformers)."""
    sentence_transformers()  # offline environment, and transformers importable
    import transformers

    cfg = spec.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise TskFormatError("the .tsk records a transformers architecture without a config 'model_type'")
    cfg = dict(cfg)
    try:
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        return transformers.AutoModel.from_config(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise TskFormatError(f"the .tsk records a transformers config that cannot be built: {exc}") from None


def load_hf(source: str | Path, f: Any = None) -> Any:
    """A compressed folder (or its ``model.tsk``) as a ``SentenceTransformer`` (plain transformers
    model when the folder has no ``modules.json``), its weights decoded from the ``.tsk``."""
    from ..format import load, read_tsk

    path = Path(source)
    file = path / TSK_NAME if path.is_dir() else path
    f = f if f is not None else read_tsk(file)
    if not is_hf_file(f.zoo_spec):
        raise TskFormatError(f"{file} does not hold a transformers model")
    model = load(f, model=_transformer(f.zoo_spec), dense=True)
    folder = file.parent
    if not (folder / "modules.json").is_file():
        return model
    st = sentence_transformers()
    with folder_with_weights(folder, model.state_dict()) as tmp:
        try:
            return st.SentenceTransformer(str(tmp), device="cpu", local_files_only=True).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot open {folder} as a sentence-transformers model: {exc}") from None


def load_any(source: Any, **kwargs: Any) -> Any:
    """``torchshrink.load``: a compressed Hugging Face folder or file as a sentence-transformers
    model, anything else through :func:`torchshrink.format.load`."""
    from ..format import load, read_tsk
    from ..format.records import TskFile

    if isinstance(source, (str, Path)) and Path(source).is_dir():
        return load_hf(source)
    if isinstance(source, (str, Path)) and "model" not in kwargs:
        reader = {k: kwargs[k] for k in ("max_bytes", "max_expansion") if k in kwargs}
        f = read_tsk(source, **reader)
        return load_hf(source, f) if is_hf_file(f.zoo_spec) else load(f, **kwargs)
    if isinstance(source, TskFile) and is_hf_file(source.zoo_spec) and "model" not in kwargs:
        return load_hf(source.path, source)
    return load(source, **kwargs)
