"""The technique interface: a recipe stage's Spec and the ``apply`` that runs it.

A technique is one :class:`Technique` object, defined in the technique's own file and
listed once in :data:`torchshrink.techniques.TECHNIQUES`. The recipe schema (the union
of stage Specs) and the stage runner are built from that registry; nothing else names a
technique. ``apply(ctx, spec, finetune)`` changes ``ctx.model`` by attaching weight
transforms, and/or returns training callbacks and a surgery plan in a :class:`Step`; the
generic runner (:mod:`torchshrink.stages`) then applies the plan and fine-tunes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field

from ..train import Callback, TrainConfig


class StageSpec(BaseModel):
    """Base of every stage Spec: ``technique`` (a ``Literal`` in each subclass) and a label."""

    model_config = ConfigDict(extra="forbid")

    technique: str
    name: str | None = Field(None, description="label shown in the report")


class LayerStage(StageSpec):
    """A stage that works on selected layers and is fine-tuned afterwards."""

    layers: list[str] = Field(default_factory=lambda: ["*"], description="layer name patterns")
    exclude: list[str] = Field(default_factory=list, description="layer name patterns to leave alone")
    finetune: TrainConfig | None = Field(None, description="retraining; default: the baseline config at lr/10")


@dataclass
class Step:
    """What ``apply`` asks the runner to do next.

    ``plan``: surgery ops (:mod:`torchshrink.surgery`) applied to the model first, giving a
    new model. ``callbacks``: passed to the fine-tuning run. ``finetune``: whether to
    fine-tune at all (only when the stage's config has epochs).
    """

    callbacks: list[Callback] = field(default_factory=list)
    plan: list[Any] = field(default_factory=list)
    finetune: bool = True


@dataclass(frozen=True)
class Technique:
    """One registry entry.

    Attributes:
        name: the ``technique:`` value in recipes (the Spec's ``Literal``).
        spec: the pydantic Spec class of a stage.
        apply: ``apply(ctx, spec, finetune_config) -> Step``; ``ctx`` is the runner's
            :class:`~torchshrink.stages.RunState`.
        changes_model: False for stages that only report (comparisons): the pipeline
            neither evaluates nor records the model after them.
        stage_list: the Spec field that holds a list of nested stages, if any; the recipe
            builder gives it the union of every technique's Spec that has none.
        summary: ``summary(report) -> renderable | None``: the technique's own table for
            ``print_report`` (from what its stage wrote into ``report.json``), shown after
            the common tables; ``None`` where the report has nothing of it.
    """

    name: str
    spec: type[StageSpec]
    apply: Callable[[Any, Any, TrainConfig], Step]
    changes_model: bool = True
    stage_list: str | None = None
    summary: Callable[[Mapping[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        tag = get_args(self.spec.model_fields["technique"].annotation)
        if tag != (self.name,):
            raise TypeError(f"{self.spec.__name__}.technique must be Literal[{self.name!r}], not {tag}")
