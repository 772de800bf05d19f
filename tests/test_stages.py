"""The generic stage runner, the storage and energy reports, and per-layer sensitivity."""

from __future__ import annotations

import io
from typing import Any, Literal

import numpy as np
import pytest
import torch
from conftest import make_mlp
from rich.console import Console

from torchshrink.core.technique import StageSpec, Step, Technique
from torchshrink.data import load_data
from torchshrink.errors import RecipeError
from torchshrink.factorize import LowRank, LowRankLinear
from torchshrink.format import read_tsk, save
from torchshrink.measure import ENERGY_PJ
from torchshrink.pipeline import energy_report, storage_report
from torchshrink.prune import magnitude
from torchshrink.quantize import kmeans
from torchshrink.recipe import parse_recipe
from torchshrink.sensitivity import sensitivity
from torchshrink.stages import RunState, finetune_config, run_stage
from torchshrink.techniques import TECHNIQUES
from torchshrink.train import TrainConfig, evaluate


class ProbeSpec(StageSpec):
    technique: Literal["probe"]
    finetune: TrainConfig | None = None
    fail: bool = False


class Probe:
    """A technique whose ``apply`` returns a chosen Step and records what it saw."""

    def __init__(self, step: Step) -> None:
        self.step, self.seen = step, []

    def __call__(self, ctx: Any, spec: ProbeSpec, finetune: TrainConfig) -> Step:
        self.seen.append((ctx.tag, finetune))
        if spec.fail:
            raise RecipeError("probe refused")
        return self.step


@pytest.fixture
def state(tmp_path) -> RunState:
    data = load_data("digits", limit=120)
    recipe = parse_recipe({"baseline": {"train": {"epochs": 1, "lr": 0.05}}})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    return RunState(recipe, data, model, tmp_path, 0, False, False, Console(file=io.StringIO()),
                    recipe.baseline.train)


def register_probe(monkeypatch, step: Step) -> Probe:
    probe = Probe(step)
    monkeypatch.setitem(TECHNIQUES, "probe", Technique("probe", ProbeSpec, probe))
    return probe


def test_default_finetune_is_the_baseline_at_a_tenth_of_the_lr() -> None:
    base = TrainConfig(epochs=7, lr=0.05)
    assert finetune_config(None, base) == base.model_copy(update={"lr": 0.005})
    own = TrainConfig(epochs=2)
    assert finetune_config(own, base) is own


def test_runner_fine_tunes_with_the_steps_callbacks(monkeypatch, state) -> None:
    calls = []
    monkeypatch.setattr(state, "fit", lambda model, cfg, cbs, tag: calls.append((model, cfg, cbs, tag)))
    marker = object()
    probe = register_probe(monkeypatch, Step(callbacks=[marker]))
    run_stage(state, ProbeSpec(technique="probe"), "stage1-probe")
    assert probe.seen == [("stage1-probe", state.baseline_config.model_copy(update={"lr": 0.005}))]
    assert len(calls) == 1
    model, cfg, cbs, tag = calls[0]
    assert model is state.model and cfg.lr == pytest.approx(0.005) and cbs == [marker] and tag == "stage1-probe"


@pytest.mark.parametrize("step, finetune", [(Step(finetune=False), None), (Step(), TrainConfig(epochs=0))])
def test_runner_skips_training_when_asked_or_without_epochs(monkeypatch, state, step, finetune) -> None:
    monkeypatch.setattr(state, "fit", lambda *a: pytest.fail("must not train"))
    register_probe(monkeypatch, step)
    run_stage(state, ProbeSpec(technique="probe", finetune=finetune), "s")


def test_runner_applies_the_surgery_plan_to_a_new_model(monkeypatch, state) -> None:
    before = state.model
    register_probe(monkeypatch, Step(plan=[LowRank(layer="1", rank=4)], finetune=False))
    run_stage(state, ProbeSpec(technique="probe"), "s")
    assert state.model is not before and isinstance(state.model[1], LowRankLinear)
    assert isinstance(before[1], torch.nn.Linear)
    assert state.model.surgery == [{"op": "low_rank", "layer": "1", "rank": 4}]


def test_runner_prefixes_a_techniques_recipe_error_with_the_stage(monkeypatch, state) -> None:
    register_probe(monkeypatch, Step())
    with pytest.raises(RecipeError, match=r"^stage3-x: probe refused$"):
        run_stage(state, ProbeSpec(technique="probe", fail=True), "stage3-x")


def test_storage_report_adds_up_to_the_measured_file(tmp_path) -> None:
    model = make_mlp()
    magnitude(model, sparsity=0.8)
    kmeans(model, 3)
    info = save(model, tmp_path / "m.tsk")
    size = (tmp_path / "m.tsk").stat().st_size
    rep = storage_report(info, size)
    f = read_tsk(tmp_path / "m.tsk")
    assert rep["file_bytes"] == size == f.file_bytes
    assert sum(r["bytes"] for r in rep["tensors"]) + rep["header_bytes"] == size
    for row in rep["tensors"]:
        assert row["bytes"] == f.nbytes(row["name"]) and row["codec"] == f.codec(row["name"])
        assert row["form"] == f.record(row["name"])["form"]
        assert row["bits_per_weight"] == pytest.approx(8 * row["bytes"] / f.tensor(row["name"]).numel())
    w0 = next(r for r in rep["tensors"] if r["name"] == "0.weight")
    assert w0["form"] in ("shared", "shared_sparse")
    assert w0["codebook"]["fixed_bits"] == 32 and w0["codebook"]["entries"] <= 8
    code_role = "indices" if w0["form"] == "shared" else "codes"
    assert w0[code_role]["fixed_bits"] == 3  # 7 centroids + the zero: 3-bit codes before Huffman
    meta = f.record("0.weight")["streams"][code_role]["meta"]
    assert w0[code_role]["huffman"] == (meta["codec"] == "huffman")


def test_energy_report_by_hand() -> None:
    base = {"macs_dense": 1000, "params": 250}
    result = {"macs_effective": 100}
    rep = energy_report(base, result, weight_bytes=40)
    per_mac = ENERGY_PJ["fp32_mult"] + ENERGY_PJ["fp32_add"]
    dense = (1000 / 4 * ENERGY_PJ["sram_32bit"] + 1000 * per_mac) / 1e6
    comp = (40 / 4 * ENERGY_PJ["sram_32bit"] + 100 * per_mac) / 1e6
    assert rep["dense"]["total_uj"] == pytest.approx(dense, rel=1e-12)
    assert rep["compressed"]["total_uj"] == pytest.approx(comp, rel=1e-12)
    assert rep["ratio"] == pytest.approx(dense / comp, rel=1e-12)


def test_sensitivity_prunes_each_layer_alone_on_copies(state) -> None:
    model, test = state.model, state.data.test
    before = {k: v.clone() for k, v in model.state_dict().items()}
    curves = sensitivity(model, test, [0.0, 0.5, 0.99], ["1", "3"], progress=False)
    assert list(curves) == ["1", "3"]
    base = evaluate(model, test)["accuracy"]
    for points in curves.values():
        assert [p["sparsity"] for p in points] == [0.0, 0.5, 0.99]
        assert points[0]["accuracy"] == base
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched


def test_sensitivity_point_equals_pruning_that_layer_by_hand(state) -> None:
    import copy

    model, test = state.model, state.data.test
    curves = sensitivity(model, test, [0.9], ["3"], progress=False)
    by_hand = copy.deepcopy(model)
    magnitude(by_hand, sparsity=0.9, layers="3")
    assert curves["3"][0]["accuracy"] == evaluate(by_hand, test)["accuracy"]
    assert np.isfinite(curves["3"][0]["accuracy"])
