"""Recipes: validated, declarative descriptions of a compression run.

A recipe is YAML data: the data set, the model, how to get the baseline, and a list of
stages, each naming a technique and its parameters. Unknown keys and bad values are
errors that name the key (``stages[0].sparsity``) and the allowed values. Shipped recipes
(``torchshrink recipes``) can be named without a path.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
PerLayer = Union[Fraction, dict[str, Fraction]]


class _StageBase(_Strict):
    name: str | None = Field(None, description="label shown in the report")
    layers: list[str] = Field(default_factory=lambda: ["*"], description="layer name patterns")
    exclude: list[str] = Field(default_factory=list)
    finetune: TrainConfig | None = Field(None, description="retraining; default: baseline config at lr/10")


class MagnitudeStage(_StageBase):
    """Han et al. 2015: magnitude threshold, iterative prune → retrain."""

    technique: Literal["magnitude"]
    sparsity: PerLayer | None = None
    quality: float | dict[str, float] | None = None
    scope: Literal["layer", "global"] = "layer"
    iterations: int = Field(3, ge=1)
    scale_dropout: bool = True

    @model_validator(mode="after")
    def _one_target(self) -> MagnitudeStage:
        if (self.sparsity is None) == (self.quality is None):
            raise ValueError("give exactly one of 'sparsity' or 'quality'")
        return self


class AGPStage(_StageBase):
    """Zhu & Gupta 2017: gradual pruning with the cubic schedule."""

    technique: Literal["agp"]
    sparsity: PerLayer
    initial_sparsity: Fraction = 0.0
    start_epoch: float = Field(0.0, ge=0)
    end_epoch: float = Field(..., gt=0)
    frequency: int = Field(10, ge=1, description="steps between mask updates (Δt)")


class SmallDenseStage(_Strict):
    """Zhu & Gupta 2017 §5: train a small dense model with the nonzeros of the current one."""

    technique: Literal["small_dense"]
    name: str | None = None
    train: TrainConfig | None = Field(None, description="default: the baseline's training config")


Bits = Annotated[int, Field(ge=1, le=16)]


class KMeansStage(_StageBase):
    """Deep Compression §3 / Gong et al. 2014: per-layer scalar k-means weight sharing."""

    technique: Literal["kmeans"]
    bits: Bits | dict[str, Bits] | None = Field(None, description="bits per layer; default by type")
    fc_bits: Bits = 5
    conv_bits: Bits = 8
    init: Literal["linear", "density", "random"] = "linear"
    include_bias: bool = Field(False, description="also share biases (own codebook per layer)")


class PQStage(_StageBase):
    """Gong et al. 2014 §3.2: product quantization along the input dimension."""

    technique: Literal["pq"]
    subvector: int = Field(4, ge=1)
    codewords: int = Field(256, ge=2, le=65536)


class RQStage(_StageBase):
    """Gong et al. 2014 §3.3: residual quantization, stage by stage."""

    technique: Literal["rq"]
    stages: int = Field(2, ge=1, le=8)
    subvector: int = Field(4, ge=1)
    codewords: int = Field(256, ge=2, le=65536)


class SVDStage(_StageBase):
    """Low-rank factorization of linear layers by truncated SVD (the baseline of Gong et al.)."""

    technique: Literal["svd"]
    rank: Annotated[int, Field(ge=1)] | Annotated[float, Field(gt=0, le=1)] | dict[str, int | float]


Method = Annotated[Union[MagnitudeStage, KMeansStage, PQStage, RQStage, SVDStage], Field(discriminator="technique")]


class CompareStage(_Strict):
    """Gong et al. 2014 Table 1 style: several methods, each on a copy of the current model.

    Each method runs (with its own optional fine-tuning) on a copy, is saved to
    ``compare/<label>.tsk`` and evaluated; the main model is left as it was.
    """

    technique: Literal["compare"]
    name: str | None = None
    methods: list[Method] = Field(..., min_length=1)


Stage = Annotated[
    Union[MagnitudeStage, AGPStage, SmallDenseStage, KMeansStage, PQStage, RQStage, SVDStage, CompareStage],
    Field(discriminator="technique"),
]


class SaveSpec(_Strict):
    """How the final model is stored (``model.tsk``)."""

    huffman: bool | None = Field(None, description="None: use Huffman wherever it is smaller")
    codecs: dict[str, str] = Field(default_factory=dict, description="force a codec per tensor-name pattern")


class SensitivitySpec(_Strict):
    sparsities: list[Fraction] = Field(default_factory=lambda: [0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    layers: list[str] = Field(default_factory=lambda: ["*"])


class MeasureSpec(_Strict):
    latency: bool = True
    batches: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [1, 64])
    repeats: int = Field(50, ge=3)


class Recipe(_Strict):
    name: str = "recipe"
    description: str = ""
    seed: int = 0
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where training runs; auto = cuda if available")
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    baseline: BaselineSpec
    stages: list[Stage] = Field(default_factory=list)
    sensitivity: SensitivitySpec = Field(default_factory=SensitivitySpec)
    save: SaveSpec = Field(default_factory=SaveSpec)
    measure: MeasureSpec = Field(default_factory=MeasureSpec)


# ---------------------------------------------------------------- loading
def shipped_recipes() -> dict[str, str]:
    """Names and first description lines of the recipes shipped with torchshrink."""
    out = {}
    for entry in sorted(resources.files("torchshrink.recipes").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            data = yaml.safe_load(entry.read_text()) or {}
            out[entry.name[:-5]] = str(data.get("description", "")).strip().splitlines()[0:1]
    return {k: (v[0] if v else "") for k, v in out.items()}


def recipe_text(path_or_name: str | Path) -> tuple[str, str]:
    """(YAML text, where it came from) for a path or the name of a shipped recipe."""
    p = Path(path_or_name)
    if p.is_file():
        return p.read_text(), str(p)
    name = str(path_or_name).removesuffix(".yaml")
    res = resources.files("torchshrink.recipes") / f"{name}.yaml"
    if "/" not in name and res.is_file():
        return res.read_text(), f"shipped recipe {name!r}"
    known = list(shipped_recipes())
    hint = difflib.get_close_matches(name, known, n=1)
    raise RecipeError(
        f"no recipe file {str(path_or_name)!r} and no shipped recipe of that name"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + f"; shipped recipes: {', '.join(known)}"
    )


def load_recipe(path_or_name: str | Path = "default", overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe; every problem becomes one :class:`RecipeError`.

    ``overrides`` are ``key.path=value`` strings (value parsed as YAML; list items by
    index: ``stages.0.finetune.epochs=2``), applied before validation.
    """
    text, origin = recipe_text(path_or_name)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{origin}: not valid YAML: {str(e).splitlines()[0]}") from None
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
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(f"{origin}: {describe_validation_error(e)}") from None


def describe_validation_error(e: ValidationError) -> str:
    """One line per problem: the dotted key, what is wrong, and the allowed values."""
    lines = []
    for err in e.errors():
        loc = list(err["loc"])
        if err["type"] == "extra_forbidden":
            parent_cls = _model_at(Recipe, loc[:-1])
            allowed = sorted(parent_cls.model_fields) if parent_cls is not None else []
            lines.append(f"unknown key {_dotted(loc)!r}; allowed keys here: {', '.join(allowed)}")
        elif err["type"] == "union_tag_invalid":
            lines.append(f"{_dotted(loc)}.technique: {err['msg']}")
        else:
            lines.append(f"{_dotted(loc)}: {err['msg']}")
    return "; ".join(dict.fromkeys(lines))


def _technique_names() -> set[str]:
    return {get_args(c.model_fields["technique"].annotation)[0] for c in get_args(get_args(Stage)[0])}


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
