"""Recipes: validated, declarative descriptions of a compression run.

A recipe is YAML data: the data set, the model, how to get the baseline, and a list of
stages, each naming a technique and its parameters. Unknown keys and bad values are
errors that name the key (``stages[0].sparsity``) and the allowed values. Shipped recipes
(``torchshrink recipes``) can be named without a path.
"""

from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from .core.params import FRACTION
from .core.technique import StageSpec
from .errors import RecipeError
from .train import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(_Strict):
    name: str = "digits"
    root: str | None = Field(None, description="directory of the data files (MNIST, CIFAR-10)")
    download: bool = False
    limit: int | None = Field(None, ge=1, description="keep only the first N train and test samples")


class ModelSpec(_Strict):
    name: str = "lenet300"
    args: dict[str, Any] = Field(default_factory=dict)


class BaselineSpec(_Strict):
    train: TrainConfig | None = None
    load: str | None = Field(None, description="safetensors file with the trained baseline weights")

    @model_validator(mode="after")
    def _one_source(self) -> BaselineSpec:
        if (self.train is None) == (self.load is None):
            raise ValueError("give exactly one of 'train' or 'load'")
        return self


class SaveSpec(_Strict):
    """How the final model is stored (``model.tsk``)."""

    huffman: bool | None = Field(None, description="None: use Huffman wherever it is smaller")
    codecs: dict[str, str] = Field(default_factory=dict, description="force a codec per tensor-name pattern")


class SensitivitySpec(_Strict):
    sparsities: list[FRACTION.type] = Field(default_factory=lambda: [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    layers: list[str] = Field(default_factory=lambda: ["*"])


class MeasureSpec(_Strict):
    latency: bool = True
    batches: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 64])
    repeats: int = Field(50, ge=3)


MAX_SEED = 2**63 - 1
"""Largest seed a recipe or ``--seed`` may give (torch seeds are 64-bit)."""


class Recipe(_Strict):
    name: str = "recipe"
    description: str = ""
    seed: int = Field(0, ge=0, le=MAX_SEED, description="random seed, 0 .. 2**63 - 1")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where training runs; auto = cuda if available")
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    baseline: BaselineSpec
    stages: list[StageSpec] = Field(default_factory=list, description="one entry per technique stage")
    sensitivity: SensitivitySpec = Field(default_factory=SensitivitySpec)
    save: SaveSpec = Field(default_factory=SaveSpec)
    measure: MeasureSpec = Field(default_factory=MeasureSpec)


_MODELS: dict[tuple, type[Recipe]] = {}


def recipe_model() -> type[Recipe]:
    """The :class:`Recipe` subclass whose ``stages`` are the union of every registered technique's Spec.

    Built from :data:`torchshrink.techniques.TECHNIQUES` (and rebuilt when it changes). A
    technique with a ``stage_list`` field (comparisons) gets that field typed as a list of
    every other technique's Spec.
    """
    from .techniques import TECHNIQUES

    key = tuple((t.name, t.spec, t.stage_list) for t in TECHNIQUES.values())
    if key not in _MODELS:
        leaves = [t.spec for t in TECHNIQUES.values() if t.stage_list is None]
        specs = []
        for t in TECHNIQUES.values():
            if t.stage_list is None:
                specs.append(t.spec)
                continue
            field = copy.copy(t.spec.model_fields[t.stage_list])
            specs.append(create_model(t.spec.__name__, __base__=t.spec, __doc__=t.spec.__doc__,
                                      **{t.stage_list: (list[_union(leaves)], field)}))
        _MODELS[key] = create_model("Recipe", __base__=Recipe, __doc__=Recipe.__doc__,
                                    stages=(list[_union(specs)], Field(default_factory=list)))
    return _MODELS[key]


def _union(specs: list[type[StageSpec]]) -> Any:
    if len(specs) == 1:
        return specs[0]
    return Annotated[Union[tuple(specs)], Field(discriminator="technique")]


# ---------------------------------------------------------------- loading
def shipped_recipes() -> dict[str, str]:
    """Names and first description lines of the recipes shipped with torchshrink."""
    out = {}
    for entry in sorted(resources.files("torchshrink.recipes").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text()) or {}
            out[entry.name[:-5]] = str(data.get("description", "")).strip().splitlines()[0:1]
    return {k: (v[0] if v else "") for k, v in out.items()}


MAX_RECIPE_BYTES = 1 << 20
"""Largest recipe file read (recipes are a few hundred bytes)."""
MAX_RECIPE_VALUES = 100_000
"""Most values (mappings, lists, scalars) a recipe may hold once YAML aliases are expanded."""
MAX_RECIPE_DEPTH = 64
"""Deepest nesting of mappings and lists a recipe may have."""


def recipe_text(path_or_name: str | Path) -> tuple[str, str]:
    """(YAML text, where it came from) for a path or the name of a shipped recipe."""
    p = Path(path_or_name)
    try:
        is_file = p.is_file()
    except OSError as e:  # e.g. a folder on the way that cannot be searched
        raise RecipeError(f"cannot read recipe file {str(p)!r}: {e.strerror or e}") from None
    if is_file:
        return _read_recipe_file(p), str(p)
    name = str(path_or_name).removesuffix(".yaml")
    res = resources.files("torchshrink.recipes") / f"{name}.yaml"
    if "/" not in name and res.is_file():
        return res.read_text(encoding="utf-8"), f"shipped recipe {name!r}"
    if p.is_dir():
        raise RecipeError(f"{str(p)!r} is a folder, not a recipe file; give the path of a .yaml file")
    known = list(shipped_recipes())
    hint = difflib.get_close_matches(name, known, n=1)
    raise RecipeError(
        f"no recipe file {str(path_or_name)!r} and no shipped recipe of that name"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + f"; shipped recipes: {', '.join(known)}"
    )


def _read_recipe_file(p: Path) -> str:
    """The UTF-8 text of a recipe file; unreadable, huge or non-UTF-8 files are a RecipeError."""
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as e:
        raise RecipeError(f"cannot read recipe file {str(p)!r}: {e.strerror or e}") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe file {str(p)!r} is larger than {MAX_RECIPE_BYTES:,} bytes; "
                          "a recipe is a short YAML text")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe file {str(p)!r} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                          f"{e.start}); save it as UTF-8 YAML") from None


def check_recipe_size(data: Any, origin: str = "recipe") -> None:
    """Refuse recipe data with more than :data:`MAX_RECIPE_VALUES` values or deeper than
    :data:`MAX_RECIPE_DEPTH` levels, counting a YAML alias every time it is reached.

    Runs in time proportional to the budget, so a "billion laughs" document (nested
    anchors and aliases) or a self-referencing alias is refused at once instead of being
    expanded by validation or by the repr in an error message.
    """
    count = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_RECIPE_VALUES:
            raise RecipeError(f"{origin}: holds more than {MAX_RECIPE_VALUES:,} values once YAML aliases (*name) are "
                              "expanded; a recipe is small, so this looks like a 'billion laughs' document")
        if isinstance(node, (dict, list, tuple, set)):
            if depth >= MAX_RECIPE_DEPTH:
                raise RecipeError(f"{origin}: nests mappings or lists more than {MAX_RECIPE_DEPTH} levels deep "
                                  "(or an alias refers to its own anchor)")
            children = [v for kv in node.items() for v in kv] if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children)


def _safe_load(text: str, what: str) -> Any:
    """``yaml.safe_load`` whose failures (bad YAML, nesting deeper than the parser's stack) are RecipeErrors."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{what}: not valid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise RecipeError(f"{what}: nests mappings or lists too deeply for the YAML parser "
                          f"(a recipe needs a few levels, at most {MAX_RECIPE_DEPTH})") from None


def load_recipe(path_or_name: str | Path = "default", overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; every problem becomes one :class:`RecipeError`.

    ``overrides`` are ``key.path=value`` strings (value parsed as YAML; list items by
    index: ``stages.0.finetune.epochs=2``), applied before validation.
    """
    text, origin = recipe_text(path_or_name)
    data = _safe_load(text, origin)
    check_recipe_size(data, origin)
    for item in overrides or []:
        apply_override(data, item)
    return parse_recipe(data, origin)


def apply_override(data: Any, item: str) -> None:
    """Set ``a.b.0.c=value`` in nested recipe data (in place)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {item!r} must look like key.path=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise RecipeError(f"override {item!r}: the value is not valid YAML") from None
    except RecursionError:
        raise RecipeError(f"override {item[:60]!r}: the value nests too deeply") from None
    check_recipe_size(value, f"override {item[:60]!r}")
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"override {item!r}: {'.'.join(parts[:i]) or 'recipe'} has no item {part!r}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise RecipeError(f"override {item!r}: {'.'.join(parts[:i])} is a value, not a mapping")


def parse_recipe(data: Any, origin: str = "recipe") -> Recipe:
    """Validate a recipe given as plain data (a dict)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe must be a mapping of keys to values, got {type(data).__name__}")
    check_recipe_size(data, origin)
    model = recipe_model()
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"{origin}: {describe_validation_error(e, model)}") from None


def describe_validation_error(e: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem: the dotted key, what is wrong, and the allowed values."""
    model = model or recipe_model()
    lines = []
    for err in e.errors():
        loc = list(err["loc"])
        if err["type"] == "extra_forbidden":
            parent_cls = _model_at(model, loc[:-1])
            allowed = sorted(parent_cls.model_fields) if parent_cls is not None else []
            lines.append(f"unknown key {_dotted(loc)!r}; allowed keys here: {', '.join(allowed)}")
        elif err["type"] == "union_tag_invalid":
            lines.append(f"{_dotted(loc)}.technique: {err['msg']}")
        else:
            lines.append(f"{_dotted(loc)}: {err['msg']}")
    return "; ".join(dict.fromkeys(lines))


def _technique_names() -> set[str]:
    from .techniques import TECHNIQUES

    return set(TECHNIQUES)


def _dotted(loc: list[Any]) -> str:
    out = ""
    tags = _technique_names()
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in tags and i > 0 and isinstance(loc[i - 1], int):
            continue  # pydantic inserts the union tag into the location
        elif isinstance(part, str) and part.startswith(("float", "dict[", "constrained")):
            continue  # union member names
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _model_at(cls: type[BaseModel], loc: list[Any]) -> type[BaseModel] | None:
    """The pydantic model class a location points into (for 'allowed keys')."""
    current: Any = cls
    for part in loc:
        if isinstance(part, int):
            continue
        if isinstance(current, type) and issubclass(current, BaseModel):
            if part in current.model_fields:
                current = current.model_fields[part].annotation
                continue
            return None
        members = _members(current)
        match = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)
                 and get_args(m.model_fields.get("technique").annotation if "technique" in m.model_fields else None)
                 == (part,)]
        if not match:
            return None
        current = match[0]
    members = [current] if isinstance(current, type) else _members(current)
    for m in members:
        if isinstance(m, type) and issubclass(m, BaseModel):
            return m
    return None


def _members(tp: Any) -> list[Any]:
    out: list[Any] = []
    stack = [tp]
    while stack:
        t = stack.pop()
        origin = get_origin(t)
        if origin is None:
            out.append(t)
        else:
            stack.extend(get_args(t))
    return out


def short_run_overrides(recipe: Recipe, epochs: int = 3) -> list[str]:
    """``--set`` overrides that run ``recipe`` quickly on digits: baseline 1 epoch, each stage at most ``epochs``.

    The file then has the recipe's forms, layer shapes and pipeline, not its paper figures
    (how the tests check every shipped recipe, and how ``benchmarks/bench_recipes.py`` makes files).
    A comparison's methods are shortened the same way; a stage that trains fewer epochs
    (Q-CNN's and Gong et al.'s 0: no fine-tuning, as in the papers) keeps its own.
    """
    from .techniques import TECHNIQUES

    sets = ["data.name=digits", "data.download=false", "baseline.train.epochs=1", "measure.latency=false"]

    def shorten(stage: StageSpec, at: str) -> None:
        nested = TECHNIQUES[stage.technique].stage_list
        if nested is not None:
            for j, inner in enumerate(getattr(stage, nested)):
                shorten(inner, f"{at}.{nested}.{j}")
            return
        block = "train" if stage.technique == "small_dense" else "finetune"
        current = getattr(getattr(stage, block, None), "epochs", None)
        if current is not None:
            sets.append(f"{at}.{block}.epochs={min(current, epochs)}")
        if stage.technique == "agp":
            sets.extend([f"{at}.end_epoch={max(1, epochs - 1)}", f"{at}.frequency=5"])
        if stage.technique == "magnitude":
            sets.append(f"{at}.iterations={epochs}")

    for i, stage in enumerate(recipe.stages):
        shorten(stage, f"stages.{i}")
    return sets
