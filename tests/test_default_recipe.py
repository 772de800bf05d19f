"""The headline: `torchshrink run` (default recipe) meets the issue's bar on digits."""

from __future__ import annotations

import io

from rich.console import Console

from torchshrink.pipeline import run_recipe
from torchshrink.recipe import load_recipe


def test_default_recipe_prunes_12x_within_half_a_point(tmp_path):
    recipe = load_recipe("default", ["measure.latency=false"])
    res = run_recipe(recipe, tmp_path, progress=False, console=Console(file=io.StringIO()))
    rep = res.report
    assert rep["baseline"]["params"] / rep["result"]["nonzero_params"] >= 12
    assert rep["baseline"]["weight_params"] / rep["result"]["weight_nonzeros"] >= 12
    assert rep["baseline"]["accuracy"] - rep["result"]["accuracy"] <= 0.005
    assert rep["baseline"]["accuracy"] > 0.95
