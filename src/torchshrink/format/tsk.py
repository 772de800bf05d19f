"""Saving and loading ``.tsk`` files: a model's weights in their smallest exact form.

``save(model, path)`` stores every entry of the model's plain (effective) state dict --
``fc1.weight``, not the parametrization internals -- with the smallest exact encoding
(:mod:`.encode`): dense, relative-index sparse, or, for a weight whose transform can
``pack()`` itself, its packed form (shared codebook indices, PQ / RQ codes), each with
optional Huffman coding of the integer streams (Han et al. 2016, "Deep Compression").
Before writing a packed form it is decoded and compared with the layer's effective
weight, so a file always reproduces the model's outputs exactly.

``load(path)`` rebuilds the architecture from the recorded ``zoo_spec`` (replaying a
recorded surgery plan) or fills a ``model=`` you pass, with plain decoded weights.
Loading never executes code: the file is JSON plus raw bytes (container layout in
:mod:`.container`, document layout below).

Document (the safetensors ``__metadata__["torchshrink"]`` JSON)::

    {"format": "tsk/1", "header_crc32": "<8 hex>",
     "architecture": {"zoo_spec": {...} | null, "surgery": [...] | null},
     "tensors": [{"name": "fc1.weight", "shape": [300, 784], "dtype": "float32",
                  "form": "sparse", "codec": "sparse(4b)+huffman", "params": {"index_bits": 4},
                  "streams": {"gaps": {"blob": "fc1.weight:gaps", "meta": {<codec meta>},
                                       "nbytes": 123, "crc32": "<8 hex>"}, ...}}, ...]}
"""

from __future__ import annotations

import copy
import fnmatch
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ModelError, TorchshrinkError
from ..selection import unwrap
from ..transforms import effective_state_dict, iter_transforms
from .container import FORMAT_VERSION, crc32_hex, write_container
from .encode import CODECS, Encoded, Options, check_packed, encode_packed, encode_plain
from .errors import TskFormatError
from .records import RAW_DTYPES, TskFile, read_tsk


@dataclass(frozen=True)
class SaveInfo:
    """What :func:`save` wrote: file size, and per tensor its codec, bytes and elements."""

    path: Path
    file_bytes: int
    tensor_bytes: dict[str, int]
    codecs: dict[str, str]
    numel: dict[str, int]

    @property
    def header_bytes(self) -> int:
        """Bytes that are not tensor data: length field, JSON header, padding."""
        return self.file_bytes - sum(self.tensor_bytes.values())

    def bits_per_weight(self, name: str) -> float:
        """File bits of tensor ``name`` per element."""
        return 8 * self.tensor_bytes[name] / max(self.numel[name], 1)


# --- save --------------------------------------------------------------------------------


def _pattern_map(value: Any, what: str, check: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TskFormatError(f"The '{what}' parameter must be a dict of {{name pattern: value}}. Got {value!r}.")
    for pattern, v in value.items():
        check(pattern, v)
    return dict(value)


def _check_codec(pattern: str, name: Any) -> None:
    if name not in CODECS:
        raise TskFormatError(f"The codec for {pattern!r} must be one of {list(CODECS)}. Got {name!r}.")


def _check_bits(pattern: str, bits: Any) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise TskFormatError(f"The 'index_bits' for {pattern!r} must be an int in [1, 16]. Got {bits!r}.")


def _first(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    for pattern, value in patterns.items():
        if fnmatch.fnmatchcase(name, pattern):
            return value
    return default


def _packers(model: nn.Module) -> dict[str, tuple[Any, torch.Tensor]]:
    """State-dict key -> (last transform with a ``pack`` method, the latent tensor)."""
    out: dict[str, tuple[Any, torch.Tensor]] = {}
    for at in iter_transforms(model):
        if callable(getattr(at.transform, "pack", None)):
            key = f"{at.layer_name}.{at.tensor_name}" if at.layer_name else at.tensor_name
            out[key] = (at.transform, at.layer.parametrizations[at.tensor_name].original)
    return out


def _dtype_name(t: torch.Tensor, name: str) -> str:
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in RAW_DTYPES:
        raise TskFormatError(f"Tensor {name!r} has dtype {dtype}, which .tsk files do not store; cast it first.")
    return dtype


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.uint16) if hasattr(torch, "uint16") else t.view(torch.int16)
    return t.numpy()


def _encode_tensor(name: str, t: torch.Tensor, packer: Any, opts: Options) -> Encoded:
    dtype = _dtype_name(t, name)
    x = _numpy(t)
    if packer is not None and opts.codec not in ("dense", "fp16"):
        transform, latent = packer
        with torch.no_grad():
            packed = check_packed(transform.pack(latent), x, name)
        return encode_packed(packed, x, opts)
    if opts.codec == "bitpack" and t.is_floating_point():
        raise TskFormatError(
            f"Codec 'bitpack' was forced for {name!r}, which has no packed form (no transform with pack()); "
            "use 'auto', 'dense', 'fp16' or 'sparse'."
        )
    return encode_plain(x, dtype, opts)


def save(
    model: nn.Module,
    path: str | Path,
    *,
    codecs: Mapping[str, str] | None = None,
    huffman: bool | None = None,
    index_bits: int | Mapping[str, int] | None = None,
) -> SaveInfo:
    """Write ``model``'s effective weights to a ``.tsk`` file in their smallest exact form.

    Args:
        codecs: ``{name pattern: codec}`` forcing a codec per tensor (first match wins):
            ``"auto"`` (smallest exact, the default), ``"dense"`` (own dtype), ``"fp16"``
            (lossy: rounds to half precision), ``"sparse"`` (relative-index; for a shared
            weight, sparse codebook indices) or ``"bitpack"`` (the transform's packed form
            with bit-packed codes). Integer tensors are always stored raw.
        huffman: ``None`` Huffman-codes an integer stream when that is smaller,
            ``True`` always, ``False`` never.
        index_bits: gap width of relative-index sparse streams, one int or ``{pattern:
            int}``; by default every width in 1..12 is tried (Deep Compression: 5 FC, 8 conv).
    Returns:
        :class:`SaveInfo` with the file size and per-tensor codec, bytes and elements.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"The 'model' parameter must be a torch.nn.Module. Got {type(model).__name__}.")
    if huffman not in (None, True, False):
        raise TskFormatError(f"The 'huffman' parameter must be None, True or False. Got {huffman!r}.")
    forced = _pattern_map(codecs, "codecs", _check_codec)
    state = effective_state_dict(model)
    single = isinstance(index_bits, int) and not isinstance(index_bits, bool)
    widths = _pattern_map({"*": index_bits} if single else index_bits, "index_bits", _check_bits)
    for pattern in [*forced, *([] if single else widths)]:
        if not any(fnmatch.fnmatchcase(k, pattern) for k in state):
            raise TskFormatError(f"The pattern {pattern!r} matches no tensor; tensors are: {', '.join(state)}.")
    packers = _packers(model)
    records, blobs = [], {}
    for name, t in state.items():
        opts = Options(_first(forced, name, "auto"), _first(widths, name, None), huffman)
        enc = _encode_tensor(name, t, packers.get(name), opts)
        streams = {}
        for s in enc.streams:
            blob = f"{name}:{s.role}"
            blobs[blob] = s.data
            streams[s.role] = {"blob": blob, "meta": s.meta, "nbytes": len(s.data), "crc32": crc32_hex(s.data)}
        records.append({"name": name, "shape": list(t.shape), "dtype": _dtype_name(t, name), "form": enc.form,
                        "codec": enc.label, "params": enc.params, "streams": streams})
    base = unwrap(model)
    surgery = getattr(base, "surgery", None)
    doc = {
        "format": FORMAT_VERSION,
        "architecture": {"zoo_spec": getattr(base, "zoo_spec", None),
                         "surgery": None if surgery is None else list(surgery)},
        "tensors": records,
    }
    file_bytes = write_container(path, doc, blobs)
    return SaveInfo(
        Path(path), file_bytes,
        {r["name"]: sum(s["nbytes"] for s in r["streams"].values()) for r in records},
        {r["name"]: r["codec"] for r in records},
        {name: t.numel() for name, t in state.items()},
    )


# --- load --------------------------------------------------------------------------------


def _replay_surgery(model: nn.Module, plan: list[Any]) -> nn.Module:
    try:
        apply_surgery = importlib.import_module("torchshrink.factorize.svd").apply_surgery
    except (ImportError, AttributeError):
        raise TskFormatError(
            f"unsupported surgery op: the file records a surgery plan ({len(plan)} step(s)) but this "
            "torchshrink has no torchshrink.factorize.svd.apply_surgery to replay it."
        ) from None
    try:
        result = apply_surgery(model, plan)
    except TorchshrinkError as exc:
        raise TskFormatError(f"unsupported surgery op: replaying the recorded plan failed: {exc}") from None
    model = model if result is None else result
    model.surgery = list(plan)
    return model


def build_architecture(f: TskFile, *, skeleton: bool = False) -> nn.Module:
    """The model a file's ``zoo_spec`` (and surgery plan) describes, with fresh weights.

    ``skeleton=True`` builds it on the ``meta`` device (shapes only, no memory) and skips
    the surgery plan: :func:`load` uses that to check the file's shapes before building.
    """
    from ..models import build_from_spec

    if f.zoo_spec is None:
        raise TskFormatError(
            f"{f.path} records no architecture (the saved model had no zoo_spec); "
            "pass your own model: load(path, model=MyNet())."
        )
    try:
        if skeleton:
            with torch.device("meta"):
                return build_from_spec(f.zoo_spec)
        model = build_from_spec(f.zoo_spec)
    except (TorchshrinkError, TypeError, ValueError, RuntimeError) as exc:
        raise TskFormatError(f"{f.path}: bad architecture metadata: {exc}") from None
    return _replay_surgery(model, f.surgery) if f.surgery else model


def _check_fits(f: TskFile, model: nn.Module) -> None:
    """Raise unless ``model``'s state dict has exactly the file's keys and shapes."""
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(f.records)), sorted(set(f.records) - set(own))
    if missing or extra:
        raise TskFormatError(f"{f.path} does not fit the model: missing {missing[:5]}, unexpected {extra[:5]}.")
    for name, t in own.items():
        if f.shape(name) != tuple(t.shape):
            raise TskFormatError(
                f"Shape mismatch: {f.path} has {name} of shape {list(f.shape(name))}, the model needs {list(t.shape)}."
            )


def load(path: str | Path, *, model: nn.Module | None = None, dense: bool = False) -> nn.Module:
    """Load a ``.tsk`` file as a model in eval mode.

    ``dense=False`` (the default): layers stored in a packed form (shared codebook
    indices, PQ codes) become runtime modules that run the compressed weights directly
    (:mod:`torchshrink.runtime.modules`); every other layer is plain PyTorch. Their
    outputs equal the decoded model's within float32 rounding.
    ``dense=True``: a plain PyTorch model with the decoded weights, bit-exact.

    With ``model`` given, its weights are replaced (keys and shapes must match the file);
    otherwise the architecture is rebuilt from the file's ``zoo_spec`` (and surgery
    plan). Shapes are checked before any tensor is decoded -- for a rebuilt model against
    a memory-free ``meta`` skeleton, so a hostile spec cannot make it allocate (a model
    with a surgery plan is checked after the plan is replayed) -- and the architecture is
    built for real only once every tensor has decoded.
    """
    f = read_tsk(path)
    if model is None:
        if not f.surgery:
            _check_fits(f, build_architecture(f, skeleton=True))
        state = f.state_dict()
        model = build_architecture(f)
    elif not isinstance(model, nn.Module):
        raise ModelError(f"The 'model' parameter must be a torch.nn.Module. Got {type(model).__name__}.")
    elif any(parametrize.is_parametrized(m) for m in model.modules()):
        raise TskFormatError("load(model=...) needs a plain model; remove its transforms first (torchshrink.bake).")
    else:
        state = None
    _check_fits(f, model)
    model.load_state_dict(f.state_dict() if state is None else state)
    if not dense:
        from ..runtime.fused import fuse

        plain = model.eval()
        swapped = _use_runtime_modules(f, copy.deepcopy(plain))
        return fuse(plain, swapped).eval()
    return model.eval()


def _use_runtime_modules(f: TskFile, model: nn.Module) -> nn.Module:
    """Swap each packed Linear / Conv2d for its runtime module (in place); return the model."""
    from ..runtime.modules import compress_module

    for name, layer in list(model.named_modules()):
        key = f"{name}.weight"
        if key not in f.records or f.record(key)["form"] not in ("shared", "shared_sparse", "pq"):
            continue
        fast = compress_module(layer, f.packed(key))
        if fast is None:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, fast)
    return model


def inspect_rows(path: str | Path) -> list[dict[str, Any]]:
    """One row per tensor: name, codec, shape, numel, nonzeros, bits per weight, bytes, share.

    ``bits_per_weight`` = 8 × the tensor's blob bytes / its elements; ``share`` = the
    tensor's bytes / the whole file (the rest is header).
    """
    f = read_tsk(path)
    rows = []
    for name in f.names:
        t = f.tensor(name)
        nbytes, numel = f.nbytes(name), t.numel()
        rows.append({
            "name": name, "codec": f.codec(name), "shape": list(t.shape), "numel": numel,
            "nonzeros": int(torch.count_nonzero(t)), "bits_per_weight": 8 * nbytes / max(numel, 1),
            "bytes": nbytes, "share": nbytes / f.file_bytes,
        })
    return rows
