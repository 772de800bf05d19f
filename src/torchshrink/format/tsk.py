"""Saving and loading ``.tsk`` files: a model's weights in their smallest exact form.

``save(model, path)`` stores every entry of the model's plain (effective) state dict --
``fc1.weight``, not the parametrization internals -- in the smallest exact form of the
:data:`~torchshrink.forms.FORMS` registry that applies: a plain form (dense,
relative-index sparse) or, for a weight whose transform can ``pack()`` itself, a form of
its packed kind, each weighing its own variants (gap widths, Huffman coding of the int
streams; Han et al. 2016, "Deep Compression"). Before a packed form is written it is
decoded and compared with the layer's effective weight, so a file always reproduces the
model's outputs exactly.

``load(path)`` rebuilds the architecture from the recorded ``zoo_spec`` (replaying the
recorded surgery plan through :mod:`torchshrink.surgery`) or fills a ``model=`` you pass;
each layer stored in a packed form becomes its form's runtime module.
Loading never executes code: the file is JSON plus raw bytes (container layout in
:mod:`.container`, document layout below).

``versions`` holds the state dict's per-module ``_metadata`` versions (``module._version``)
that are not 1, nn.Module's default, as plain integers (omitted when there are none):
``load`` passes them back to ``load_state_dict``, whose version-dependent loaders
(BatchNorm, torchvision's MNASNet) need them. A file without the field (written before
it existed, or with every version 1) loads with the target model's own versions (its
keys and shapes are checked to match first).

Document (the safetensors ``__metadata__["torchshrink"]`` JSON)::

    {"format": "tsk/1", "header_crc32": "<8 hex>",
     "architecture": {"zoo_spec": {...} | null, "surgery": [...] | null,
                      "versions": {"bn1": 2, ...} (optional)},
     "tensors": [{"name": "fc1.weight", "shape": [300, 784], "dtype": "float32",
                  "form": "sparse", "codec": "sparse(4b)+huffman", "params": {"index_bits": 4},
                  "streams": {"gaps": {"blob": "fc1.weight:gaps", "meta": {<codec meta>},
                                       "nbytes": 123, "crc32": "<8 hex>"}, ...}}, ...]}
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core.params import Interval, check
from ..core.select import per_layer, tensor_key, unwrap
from ..core.transform import effective_state_dict, iter_transforms, packer
from ..errors import ModelError, TorchshrinkError
from .. import forms
from ..surgery.plan import parse_plan, replay_plan
from .codecs import RAW_DTYPES
from .container import FORMAT_VERSION, crc32_hex, write_container
from .errors import TskFormatError
from .records import DEFAULT_MAX_BYTES, MAX_EXPANSION, TskFile, read_tsk
from .streams import Encoded, Options


@dataclass(frozen=True)
class SaveInfo:
    """What :func:`save` wrote: the file size and the tensor records (as in the file's document).

    Each record has ``name``, ``shape``, ``dtype``, ``form``, ``codec`` (a readable label),
    ``params`` and ``streams`` (role -> ``meta``, ``nbytes``, ``crc32``, ``blob``).
    ``widths[name][role]`` is a stream's fixed entry width in bits before entropy coding.
    """

    path: Path
    file_bytes: int
    records: list[dict[str, Any]]
    widths: dict[str, dict[str, int | None]]

    @property
    def tensor_bytes(self) -> dict[str, int]:
        """Bytes of each tensor's blobs."""
        return {r["name"]: sum(s["nbytes"] for s in r["streams"].values()) for r in self.records}

    @property
    def codecs(self) -> dict[str, str]:
        """Each tensor's codec label (``shared(5b)/sparse(4b)+huffman(gaps,codes)``)."""
        return {r["name"]: r["codec"] for r in self.records}

    @property
    def header_bytes(self) -> int:
        """Bytes that are not tensor data: length field, JSON header, padding."""
        return self.file_bytes - sum(self.tensor_bytes.values())


# --- save --------------------------------------------------------------------------------


def forced_codecs() -> tuple[str, ...]:
    """The names ``save(codecs=...)`` accepts: ``"auto"`` and every name a registered form is selected by."""
    return ("auto", *dict.fromkeys(c for f in forms.FORMS.values() for c in f.selected_by))


def _check_codec(name: Any, key: str) -> str:
    allowed = forced_codecs()
    if name not in allowed:
        raise TskFormatError(f"The codec {key} must be one of {list(allowed)}. Got {name!r}.")
    return name


def _check_bits(bits: Any, key: str) -> int:
    return check(bits, key, "save", Interval(int, 1, 16), error=TskFormatError)


def _packers(model: nn.Module) -> dict[str, tuple[Any, torch.Tensor]]:
    """State-dict key -> (the transform that packs it, that transform's input)."""
    out: dict[str, tuple[Any, torch.Tensor]] = {}
    for at in iter_transforms(model):
        key = tensor_key(at.layer_name, at.tensor_name)
        if key not in out:
            found = packer(at.layer, at.tensor_name)
            if found is not None:
                out[key] = found
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


def check_packed(packed: Any, effective: np.ndarray, name: str) -> dict[str, Any]:
    """Normalize a ``pack()`` result to numpy and check it decodes to ``effective``.

    Equality is bitwise except that +0.0 and -0.0 count as equal (they give the same
    layer outputs); anything else means the transform's forward and its ``pack`` disagree.
    """
    packed = _to_numpy(packed)
    if not isinstance(packed, dict):
        raise TskFormatError(f"pack() of {name!r} must return a dict. Got {type(packed).__name__}.")
    try:
        decoded = forms.form_of(packed).unpack(packed)
    except TskFormatError as exc:
        raise TskFormatError(f"pack() of {name!r} returned a malformed form: {exc}") from None
    ok = decoded.shape == effective.shape
    if ok:
        a, b = decoded.view(np.uint32), np.ascontiguousarray(effective, dtype=np.float32).view(np.uint32)
        ok = bool(np.all((a == b) | (((a | b) & 0x7FFFFFFF) == 0)))
    if not ok:
        raise TskFormatError(
            f"pack() of {name!r} does not reproduce the layer's effective weight bit for bit; fix the "
            f"transform, or store the plain weight with codecs={{{name!r}: 'dense'}}."
        )
    return packed


def _to_numpy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping):
        return [_to_numpy(v) for v in value]
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    return value


def _candidates(plain: forms.Plain, packed: dict | None, opts: Options) -> list[tuple[forms.Form, Any]]:
    """(form, value) pairs that may store a tensor: its packed kind's forms first, then the plain ones.

    A forced codec keeps only the forms it selects, and prefers the packed kind's forms.
    """
    packed_forms = [(f, packed) for f in forms.FORMS.values()
                    if packed is not None and f.packs == packed["form"] and plain.dtype in f.dtypes]
    plain_forms = [(f, plain) for f in forms.FORMS.values() if f.packs is None and plain.dtype in f.dtypes]
    if opts.codec == "auto":
        return packed_forms + plain_forms
    chosen = [(f, v) for f, v in packed_forms if opts.codec in f.selected_by]
    return chosen or [(f, v) for f, v in plain_forms if opts.codec in f.selected_by]


def _encode_tensor(name: str, t: torch.Tensor, pk: tuple[Any, torch.Tensor] | None, opts: Options) -> Encoded:
    plain = forms.Plain(_numpy(t), _dtype_name(t, name))
    packed = None
    if pk is not None and (opts.codec == "auto" or any(f.packs and opts.codec in f.selected_by
                                                       for f in forms.FORMS.values())):
        transform, w_in = pk
        with torch.no_grad():
            packed = check_packed(transform.pack(w_in), plain.values, name)
    if not t.is_floating_point():
        opts = Options()  # integer tensors are always stored raw
    best = None
    for form, value in _candidates(plain, packed, opts):
        plan = form.plan(value, opts)
        if plan is not None and (best is None or plan[0] < best[0]):
            best = (plan[0], form, value, plan[1])
    if best is None:
        usable = ["auto", *dict.fromkeys(c for f, _ in _candidates(plain, None, Options()) for c in f.selected_by)]
        raise TskFormatError(
            f"Codec {opts.codec!r} was forced for {name!r}, which has no packed form it applies to; "
            f"use one of {usable}."
        )
    _, form, value, plan = best
    return plan if isinstance(plan, Encoded) else form.encode(value, plan, opts)


def _plan_of(model: nn.Module) -> list[dict[str, Any]] | None:
    """The model's recorded surgery plan, validated (an op load could not replay is refused here)."""
    plan = getattr(model, "surgery", None)
    if plan is None:
        return None
    try:
        return [op.model_dump(mode="json") for op in parse_plan(plan)]
    except ModelError as exc:
        raise TskFormatError(f"cannot save the model's surgery plan: {exc}") from None


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
        codecs: ``{name pattern: codec}`` forcing a choice per tensor (first match wins):
            ``"auto"`` (smallest exact, the default), ``"dense"`` (own dtype), ``"fp16"``
            (lossy: rounds to half precision), ``"sparse"`` (relative-index; for a shared
            weight, sparse codebook indices) or ``"bitpack"`` (the transform's packed form
            with dense codes, bit-packed or Huffman coded as ``huffman`` says); each form
            says which names select it. Integer tensors are always stored raw.
        huffman: ``None`` Huffman-codes an integer stream when that is smaller,
            ``True`` always, ``False`` never.
        index_bits: gap width of relative-index sparse streams, one int or ``{pattern:
            int}``; by default every width in 1..12 is tried (Deep Compression: 5 FC, 8 conv).
    Returns:
        :class:`SaveInfo` with the file size and the tensor records.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"The 'model' parameter must be a torch.nn.Module. Got {type(model).__name__}.")
    if huffman not in (None, True, False):
        raise TskFormatError(f"The 'huffman' parameter must be None, True or False. Got {huffman!r}.")
    if codecs is not None and not isinstance(codecs, Mapping):
        raise TskFormatError(f"The 'codecs' parameter must be a dict of {{name pattern: codec}}. Got {codecs!r}.")
    state = effective_state_dict(model)
    names = list(state)
    forced = per_layer(codecs, names, "codecs", _check_codec, error=TskFormatError, items="tensor")
    widths = per_layer(index_bits, names, "index_bits", _check_bits, error=TskFormatError, items="tensor")
    base = unwrap(model)
    surgery = _plan_of(base)
    packers = _packers(model)
    records, blobs, entry_bits = [], {}, {}
    for name, t in state.items():
        enc = _encode_tensor(name, t, packers.get(name), Options(forced.get(name, "auto"), widths.get(name), huffman))
        streams = {}
        entry_bits[name] = {s.role: s.width for s in enc.streams}
        for s in enc.streams:
            blob = f"{name}:{s.role}"
            blobs[blob] = s.data
            streams[s.role] = {"blob": blob, "meta": s.meta, "nbytes": len(s.data), "crc32": crc32_hex(s.data)}
        records.append({"name": name, "shape": list(t.shape), "dtype": _dtype_name(t, name), "form": enc.form,
                        "codec": enc.label, "params": enc.params, "streams": streams})
    arch = {"zoo_spec": getattr(base, "zoo_spec", None), "surgery": surgery}
    versions = module_versions(base)
    if versions:  # omitted when all are 1: such a file is byte for byte what it was before the field
        arch["versions"] = versions
    doc = {"format": FORMAT_VERSION, "architecture": arch, "tensors": records}
    file_bytes = write_container(path, doc, blobs)
    return SaveInfo(Path(path), file_bytes, records, entry_bits)


def module_versions(model: nn.Module) -> dict[str, int]:
    """Module name -> its ``_version`` (the state dict's ``_metadata``), where it is not 1."""
    return {name: m._version for name, m in model.named_modules(remove_duplicate=False)
            if type(getattr(m, "_version", 1)) is int and m._version != 1}


def _with_metadata(state: Mapping[str, torch.Tensor], f: TskFile, model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` with the ``_metadata`` ``load_state_dict`` hands each module: the file's versions
    (1 where it lists none), or the model's own for a file without the field."""
    out = OrderedDict(state)
    out._metadata = OrderedDict(  # type: ignore[attr-defined]
        (name, {"version": m._version if f.versions is None else f.versions.get(name, 1)})
        for name, m in model.named_modules(remove_duplicate=False))
    return out


def encoded_bytes(model: nn.Module, names: list[str] | None = None, *, huffman: bool | None = None) -> dict[str, int]:
    """Bytes each tensor of ``model`` (or just ``names``) takes in a ``.tsk`` file, encoded for real.

    The same choice of form and codec as :func:`save` (with default codecs), without
    writing a file: the tensor data only (the file adds its header, see ``SaveInfo.header_bytes``).
    """
    state = effective_state_dict(model)
    unknown = [n for n in names or [] if n not in state]
    if unknown:
        raise ModelError(f"encoded_bytes: the model has no tensor {unknown[0]!r}")
    packers = _packers(model)
    return {name: sum(len(s.data) for s in _encode_tensor(name, state[name], packers.get(name),
                                                          Options("auto", None, huffman)).streams)
            for name in (names if names is not None else list(state))}


# --- load --------------------------------------------------------------------------------


def _architecture(f: TskFile, *, skeleton: bool) -> nn.Module:
    """The model a file's ``zoo_spec`` and surgery plan describe, with fresh weights.

    ``skeleton=True`` builds it on the ``meta`` device (shapes only, no memory): :func:`load`
    checks the file's shapes against it before building anything for real.
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
                model = build_from_spec(f.zoo_spec)
                return replay_plan(model, f.surgery) if f.surgery else model
        model = build_from_spec(f.zoo_spec)
        return replay_plan(model, f.surgery) if f.surgery else model
    except (TorchshrinkError, TypeError, ValueError, RuntimeError) as exc:
        raise TskFormatError(f"{f.path}: bad architecture metadata: {exc}") from None


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


def load(source: str | Path | TskFile, *, model: nn.Module | None = None, dense: bool = False,
         max_bytes: int = DEFAULT_MAX_BYTES, max_expansion: float = MAX_EXPANSION,
         batches: tuple[int, ...] = (1, 64), lean: bool = False) -> nn.Module:
    """Load a ``.tsk`` file (a path, or a :class:`TskFile` already read) as a model in eval mode.

    ``dense=False`` (the default): each layer whose weight is stored in a packed form
    becomes its form's runtime module, which runs the compressed weights directly
    (:mod:`torchshrink.runtime`); every other layer is plain PyTorch. Their outputs equal
    the decoded model's within float32 rounding. Each runtime layer (and the whole model)
    runs its kernel or its decoded dense twin, whichever was measured faster on this
    machine; with a recorded input shape that is decided now for ``batches``
    (:mod:`torchshrink.runtime.dispatch`), else on the first call of each input shape.
    ``dense=True``: a plain PyTorch model with the decoded weights, bit-exact.

    ``lean=True`` trades that guarantee for memory: once the paths are decided, every
    dense twin whose layer (or fused chain, or whole model) chose its kernel at each of
    ``batches`` is dropped (:func:`torchshrink.runtime.dispatch.drop_twins`), so the
    model holds the packed weights and only the decoded layers that run dense. Other
    batch sizes then run the kernel, and so does autograd (inference only).

    With ``model`` given, its weights are replaced (keys and shapes must match the file);
    otherwise the architecture is rebuilt from the file's ``zoo_spec`` and surgery plan.
    Shapes are checked before any tensor is decoded -- for a rebuilt model against a
    memory-free ``meta`` skeleton (surgery replayed there too), so a hostile spec cannot
    make it allocate -- and the architecture is built for real only once every tensor
    has decoded. ``max_bytes`` and ``max_expansion`` cap the decoded tensors, in bytes and
    relative to the file's size (see :func:`read_tsk`). A file that
    loads gives the same outputs both ways (runtime modules within float32 rounding).
    """
    f = source if isinstance(source, TskFile) else read_tsk(source, max_bytes=max_bytes, max_expansion=max_expansion)
    if model is None:
        _check_fits(f, _architecture(f, skeleton=True))
        state = f.state_dict()
        model = _architecture(f, skeleton=False)
    elif not isinstance(model, nn.Module):
        raise ModelError(f"The 'model' parameter must be a torch.nn.Module. Got {type(model).__name__}.")
    elif any(parametrize.is_parametrized(m) for m in model.modules()):
        raise TskFormatError("load(model=...) needs a plain model; remove its transforms first (torchshrink.bake).")
    else:
        state = None
    _check_fits(f, model)
    model.load_state_dict(_with_metadata(f.state_dict() if state is None else state, f, model))
    model.eval()
    if dense:
        return model
    fast = runtime_model(f, model, batches=tuple(batches)).eval()  # RuntimeModel starts in train mode
    if lean:
        from ..runtime.dispatch import drop_twins

        drop_twins(fast)
    return fast


def runtime_model(f: TskFile, plain: nn.Module, *, batches: tuple[int, ...] = (1, 64)) -> nn.Module:
    """A copy of ``plain`` (holding ``f``'s decoded weights) whose layers run their form's runtime module.

    Each runtime layer keeps its decoded dense twin and runs, per input shape, whichever
    of the two was measured faster on this machine (:mod:`torchshrink.runtime.dispatch`);
    when the file records a zoo input shape the paths are decided now for ``batches``.
    The twins are ``plain``'s own layers, and the layers without a kernel share
    ``plain``'s tensors: the decoded weights are in memory once, beside the kernels.
    """
    from ..runtime.dispatch import FUSED, Dispatching, RuntimeModel, attach_twin, settle
    from ..runtime.fused import fuse
    from ..runtime.modules import runtime_layers
    from ..runtime.xnor import fuse_bitwise

    fast = _structure_copy(plain)
    for name, layer in list(fast.named_modules()):
        key = tensor_key(name, "weight")
        if key not in f.records:
            continue
        form = f.form(key)
        if form.packs is None and type(form).runtime is forms.Form.runtime:
            continue  # a plain form without a kernel (dense): nothing to decode again
        try:
            module = form.runtime(layer, f.packed(key) if form.packs is not None else f.array(key))
        except ModelError:  # a value no kernel runs (e.g. a zero among the shared levels): stay dense
            module = None
        if module is None:
            continue
        module = attach_twin(module, plain.get_submodule(name), name)  # the plain layer itself: no second copy
        parent_name, _, child = name.rpartition(".")
        if not child:
            fast = module
            continue
        setattr(fast.get_submodule(parent_name) if parent_name else fast, child, module)
    if runtime_layers(fast) == 0:
        return fast.eval()
    shape = (f.zoo_spec or {}).get("input_shape") if isinstance(f.zoo_spec, Mapping) else None
    ok = (bool(batches) and isinstance(shape, list) and all(isinstance(d, int) and d > 0 for d in shape)
          and int(np.prod(shape)) * max(batches) <= CALIBRATE_MAX_ELEMENTS)
    bitwise = fuse_bitwise(plain, fast)  # a folded bitwise MLP: activations stay packed end to end
    if bitwise is not fast:
        top = RuntimeModel(bitwise, plain, [])
        return _calibrated(top, shape, batches) if ok else top
    fused = fuse(plain, fast)  # before settling: fusion needs every layer's kernel
    fused = fused if fused is not fast and isinstance(fused, Dispatching) else None
    settled: list[tuple[str, dict]] = []
    fast = _calibrated(fast.eval(), shape, batches, lambda m: settle(m, settled)) if ok else fast.eval()
    if fused is not None:
        fast = attach_twin(fused, fast, FUSED).eval()
    top = RuntimeModel(fast, plain, settled)
    return _calibrated(top, shape, batches) if ok else top


def _structure_copy(plain: nn.Module) -> nn.Module:
    """A copy of ``plain``'s modules that shares its parameters and buffers (inference only: nothing is trained).

    The runtime model replaces its packed layers by runtime modules and keeps ``plain``
    as the dense twin of the whole model and of each layer, so the decoded weights are
    held once, not once per copy (a loaded model used to hold them three times).
    """
    memo: dict[int, Any] = {id(t): t for t in (*plain.parameters(), *plain.buffers())}
    return copy.deepcopy(plain, memo)


def _calibrated(model: nn.Module, shape: Any, batches: tuple[int, ...], then: Any = None) -> nn.Module:
    from ..runtime.dispatch import calibrate

    try:
        calibrate(model, shape, batches)
    except (RuntimeError, ValueError, TorchshrinkError):  # a model that cannot run its recorded shape
        return model  # decides on first call instead
    return then(model) if then is not None else model


#: Largest calibration input (elements) ``runtime_model`` builds from a recorded input shape.
CALIBRATE_MAX_ELEMENTS = 1 << 24


def inspect_rows(source: str | Path | TskFile, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_expansion: float = MAX_EXPANSION) -> list[dict[str, Any]]:
    """One row per tensor: name, codec, shape, numel, nonzeros, bits per weight, bytes, share.

    ``bits_per_weight`` = 8 × the tensor's blob bytes / its elements; ``share`` = the
    tensor's bytes / the whole file (the rest is header).
    """
    f = source if isinstance(source, TskFile) else read_tsk(source, max_bytes=max_bytes, max_expansion=max_expansion)
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
