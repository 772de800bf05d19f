"""Recipe validation: every problem is a RecipeError naming the key and allowed values."""

from __future__ import annotations

import pytest

from torchshrink.errors import RecipeError
from torchshrink.recipe import apply_override, load_recipe, parse_recipe, shipped_recipes

OK = {"baseline": {"train": {"epochs": 1}}}


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_validates(name):
    r = load_recipe(name)
    assert r.name == name
    assert r.stages


def test_shipped_recipes_are_listed_with_descriptions():
    rec = shipped_recipes()
    for name in ("default", "han2015_lenet300", "han2015_lenet5", "zhu2017_agp", "zhu2017_sparse_vs_dense"):
        assert rec[name]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"baseline": {"train": {"lrr": 0.1}}}, r"unknown key 'baseline\.train\.lrr'; allowed keys here: .*lr"),
        ({"baseline": {"train": {"optimizer": "rmsprop"}}}, r"baseline\.train\.optimizer: .*'sgd', 'adam' or 'adamw'"),
        ({**OK, "stages": [{"technique": "magnitud", "sparsity": 0.5}]}, r"stages\[0\]\.technique: .*'magnitude'"),
        ({**OK, "stages": [{"technique": "magnitude", "sparsity": 0.5, "bogus": 1}]},
         r"unknown key 'stages\[0\]\.bogus'; allowed keys here: .*iterations"),
        ({**OK, "stages": [{"technique": "magnitude", "sparsity": 1.5}]}, r"stages\[0\]\.sparsity: .*less than 1"),
        ({**OK, "stages": [{"technique": "magnitude"}]}, r"exactly one of 'sparsity' or 'quality'"),
        ({**OK, "stages": [{"technique": "agp", "sparsity": 0.5}]}, r"stages\[0\]\.end_epoch: Field required"),
        ({"baseline": {}}, r"baseline: .*exactly one of 'train' or 'load'"),
        ({**OK, "dat": {}}, r"unknown key 'dat'; allowed keys here: .*data"),
        ({**OK, "data": {"limit": 0}}, r"data\.limit: .*greater than or equal to 1"),
    ],
)
def test_bad_recipes_name_the_key(data, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


def test_not_a_mapping():
    with pytest.raises(RecipeError, match="must be a mapping"):
        parse_recipe([1, 2])


def test_unknown_recipe_name_suggests_and_lists(tmp_path):
    with pytest.raises(RecipeError, match=r"did you mean 'default'.*shipped recipes: .*han2015_lenet300"):
        load_recipe("defualt")


def test_invalid_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("baseline: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_overrides_set_nested_values_and_list_items():
    r = load_recipe("default", ["seed=3", "stages.0.finetune.epochs=6", "data.limit=50"])
    assert (r.seed, r.stages[0].finetune.epochs, r.data.limit) == (3, 6, 50)


@pytest.mark.parametrize(("item", "message"), [
    ("noequals", "must look like key.path=value"),
    ("stages.5.iterations=2", "has no item '5'"),
    ("seed.x=1", "is a value, not a mapping"),
])
def test_bad_overrides(item, message):
    with pytest.raises(RecipeError, match=message):
        apply_override({"seed": 0, "stages": [{}]}, item)


def test_short_run_overrides_shorten_every_stage_and_comparison_method_but_never_lengthen():
    from torchshrink.recipe import short_run_overrides

    for name in shipped_recipes():
        recipe = load_recipe(name)
        sets = short_run_overrides(recipe, epochs=3)
        short = load_recipe(name, sets)  # every override names a real key
        assert short.baseline.train.epochs == 1 and short.data.name == "digits"
        for full, cut in zip(recipe.stages, short.stages):
            pairs = list(zip(getattr(full, "methods", None) or [full], getattr(cut, "methods", None) or [cut]))
            for a, b in pairs:
                block = "train" if a.technique == "small_dense" else "finetune"
                if getattr(a, block, None) is not None:
                    assert getattr(b, block).epochs == min(getattr(a, block).epochs, 3)
    qcnn = short_run_overrides(load_recipe("wu2016_qcnn"))
    assert "stages.0.methods.2.finetune.epochs=0" in qcnn and "stages.1.finetune.epochs=0" in qcnn
