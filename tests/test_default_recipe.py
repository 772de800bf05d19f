"""The headline: `torchshrink run` (default recipe) meets the issue's bar on digits."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from torchshrink.pipeline import run_recipe
from torchshrink.recipe import load_recipe, shipped_recipes, short_run_overrides


def test_default_recipe_prunes_12x_within_half_a_point(tmp_path):
    recipe = load_recipe("default", ["measure.latency=false"])
    res = run_recipe(recipe, tmp_path, progress=False, console=Console(file=io.StringIO()))
    rep = res.report
    assert rep["baseline"]["params"] / rep["result"]["nonzero_params"] >= 12
    assert rep["baseline"]["weight_params"] / rep["result"]["weight_nonzeros"] >= 12
    assert rep["baseline"]["accuracy"] - rep["result"]["accuracy"] <= 0.005
    assert rep["baseline"]["accuracy"] > 0.95



#: Recipes that already run in full below (same pipeline, stricter bounds): no short run twice.
FULL_RUNS = ("deep_compression_lenet300", "deep_compression_lenet5")
#: Comparison recipes leave the main model as it was; their rows are checked on their own below.
COMPARISONS = ("gong2014_vq", "hou2017_lab")  # hou2017_lab: rows checked in test_binary.py
#: Factorization / quantization recipes keep every parameter nonzero; tests/test_tt.py and
#: tests/test_qcnn.py run them on digits (short) and check their own figures.
NOT_PRUNING = ("novikov2015_tt", "wu2016_qcnn")
#: Recipes whose own test file runs them short on digits and checks their own figures.
CHECKED_ELSEWHERE = ("amc_vgg16_cifar10",)  # tests/test_amc.py


@pytest.mark.parametrize("name", sorted(set(shipped_recipes()) - set(FULL_RUNS) - set(COMPARISONS) - set(NOT_PRUNING)
                                        - set(CHECKED_ELSEWHERE)))
def test_every_shipped_recipe_runs_end_to_end_on_digits(name, tmp_path):
    """The paper recipes need MNIST; their pipeline is checked on digits with short epochs.

    The Deep Compression recipes run on digits as shipped in the test after this one, which
    checks everything this one does and more; the comparison recipe's method rows have a
    test of their own (its main model is left as it was, so the checks here do not apply).
    """
    recipe = load_recipe(name)
    sets = short_run_overrides(recipe, epochs=3)
    res = run_recipe(load_recipe(name, sets), tmp_path, progress=False, console=Console(file=io.StringIO()))
    rep = res.report
    if any(s.technique == "bitwise" for s in recipe.stages):  # 1 bit a weight; input bit-planes widen fc1
        assert rep["size"]["file_bytes"] * 20 < rep["size"]["dense_bytes"]
    else:
        assert rep["result"]["nonzero_params"] < rep["baseline"]["params"]
    assert rep["result"]["accuracy"] > 0.3
    for layer in rep["layers"]:
        assert layer["nonzeros"] <= layer["params"]
    assert rep["size"]["roundtrip_exact"] is True  # model.tsk reproduces the outputs bit for bit
    assert rep["size"]["file_bytes"] == (tmp_path / "model.tsk").stat().st_size


@pytest.mark.parametrize("name", FULL_RUNS)
def test_deep_compression_recipes_are_30x_smaller_within_half_a_point(name, tmp_path):
    res = run_recipe(load_recipe(name, ["measure.latency=false"]), tmp_path, progress=False,
                     console=Console(file=io.StringIO()))
    rep = res.report
    assert rep["result"]["nonzero_params"] < rep["baseline"]["params"]
    for layer in rep["layers"]:
        assert layer["nonzeros"] <= layer["params"]
        assert layer["form"] in ("shared", "shared_sparse") and layer["bits_per_weight"] < 32
    assert rep["runtime"]["compressed_layers"] >= 1 and rep["runtime"]["prediction_agreement"] == 1.0
    assert rep["size"]["file_bytes"] == (tmp_path / "model.tsk").stat().st_size
    assert rep["size"]["ratio"] >= 30
    assert rep["baseline"]["accuracy"] - rep["result"]["accuracy"] <= 0.005
    assert rep["size"]["roundtrip_exact"] is True


def test_gong2014_vq_rows_are_measured_per_method(tmp_path):
    """Every method row of the comparison: its own file, bytes, ratio, accuracy and parameters."""
    from torchshrink.data import load_data
    from torchshrink.factorize import low_rank_params
    from torchshrink.format import load
    from torchshrink.train import evaluate

    res = run_recipe(load_recipe("gong2014_vq", ["baseline.train.epochs=3"]), tmp_path, progress=False,
                     console=Console(file=io.StringIO()))
    rep = res.report
    rows = {r["method"]: r for r in rep["methods"]}
    assert list(rows) == ["kmeans-2bit", "pq-d8-k8", "rq-2x4", "svd-rank4"]
    dense = rep["size"]["dense_bytes"]
    data = load_data("digits")
    for label, row in rows.items():
        path = tmp_path / "compare" / f"{label}.tsk"
        assert row["file_bytes"] == path.stat().st_size > 0
        assert row["ratio"] == pytest.approx(dense / row["file_bytes"], rel=1e-12)
        assert row["accuracy"] == evaluate(load(path, dense=True), data.test)["accuracy"]
        assert row["accuracy"] > 0.1
    weights = 64 * 300 + 300 * 100 + 100 * 10
    assert rows["kmeans-2bit"]["file_bytes"] >= weights * 2 // 8  # 2-bit codes at least
    assert rows["kmeans-2bit"]["ratio"] > 12
    assert rows["pq-d8-k8"]["ratio"] > 5 and rows["rq-2x4"]["ratio"] > 5
    assert rows["svd-rank4"]["params"] == sum(low_rank_params(m, n, 4) for m, n in ((300, 64), (100, 300), (10, 100)))
    assert rows["kmeans-2bit"]["params"] == rep["baseline"]["params"]  # quantization keeps the architecture
    assert rep["result"]["accuracy"] == rep["baseline"]["accuracy"]  # the main model is left as it was
    assert rep["size"]["roundtrip_exact"] is True
    assert rep["size"]["file_bytes"] == (tmp_path / "model.tsk").stat().st_size
