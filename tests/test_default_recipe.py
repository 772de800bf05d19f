"""The headline: `torchshrink run` (default recipe) meets the issue's bar on digits."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from torchshrink.pipeline import run_recipe
from torchshrink.recipe import load_recipe, shipped_recipes


def test_default_recipe_prunes_12x_within_half_a_point(tmp_path):
    recipe = load_recipe("default", ["measure.latency=false"])
    res = run_recipe(recipe, tmp_path, progress=False, console=Console(file=io.StringIO()))
    rep = res.report
    assert rep["baseline"]["params"] / rep["result"]["nonzero_params"] >= 12
    assert rep["baseline"]["weight_params"] / rep["result"]["weight_nonzeros"] >= 12
    assert rep["baseline"]["accuracy"] - rep["result"]["accuracy"] <= 0.005
    assert rep["baseline"]["accuracy"] > 0.95



@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_runs_end_to_end_on_digits(name, tmp_path):
    """The paper recipes need MNIST; their pipeline is checked on digits with short epochs."""
    recipe = load_recipe(name)
    sets = ["data.name=digits", "data.download=false", "baseline.train.epochs=1", "measure.latency=false"]
    for i, stage in enumerate(recipe.stages):
        if stage.technique == "compare":
            continue
        block = "train" if stage.technique == "small_dense" else "finetune"
        sets.append(f"stages.{i}.{block}.epochs=3")
        if stage.technique == "agp":
            sets += [f"stages.{i}.end_epoch=2", f"stages.{i}.frequency=5"]
        if stage.technique == "magnitude":
            sets.append(f"stages.{i}.iterations=3")
    res = run_recipe(load_recipe(name, sets), tmp_path, progress=False, console=Console(file=io.StringIO()))
    rep = res.report
    assert rep["result"]["nonzero_params"] < rep["baseline"]["params"]
    assert rep["result"]["accuracy"] > 0.3
    for layer in rep["layers"]:
        assert layer["nonzeros"] <= layer["params"]
    assert rep["size"]["roundtrip_exact"] is True  # model.tsk reproduces the outputs bit for bit
    assert rep["size"]["file_bytes"] == (tmp_path / "model.tsk").stat().st_size


@pytest.mark.parametrize("name", ["deep_compression_lenet300", "deep_compression_lenet5"])
def test_deep_compression_recipes_are_30x_smaller_within_half_a_point(name, tmp_path):
    res = run_recipe(load_recipe(name, ["measure.latency=false"]), tmp_path, progress=False,
                     console=Console(file=io.StringIO()))
    rep = res.report
    assert rep["size"]["file_bytes"] == (tmp_path / "model.tsk").stat().st_size
    assert rep["size"]["ratio"] >= 30
    assert rep["baseline"]["accuracy"] - rep["result"]["accuracy"] <= 0.005
    assert rep["size"]["roundtrip_exact"] is True
