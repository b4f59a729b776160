"""Recipes: every shipped recipe loads; types, ranges, unknown keys, overrides and method presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from xgblora_cli.common.errors import UserError
from xgblora_cli.recipe import (
    PRESETS,
    EvalArgs,
    Recipe,
    TrainArgs,
    field_docs,
    resolve_plan,
)
from xgblora_cli.recipe_file import load_recipe, recipe_from_dict

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
BASE = {"model": "m", "dataset": "d.json", "output_dir": "runs/x"}


def make(**fields) -> Recipe:
    return recipe_from_dict({**BASE, **fields}, "r.yaml")


def test_learning_rate_defaults_to_the_method_preset_unless_set() -> None:
    rates = {method: make(method=method).learning_rate for method in PRESETS}
    assert rates == {method: preset.learning_rate for method, preset in PRESETS.items()}
    assert rates["xgblora"] > rates["lora"]  # short-lived boosters take a larger rate (docs/benchmarks.md)
    assert make(method="xgblora", train={"learning_rate": 3e-4}).learning_rate == pytest.approx(3e-4)
    overridden = recipe_from_dict(BASE, "r.yaml", ["method=lora"])
    assert overridden.learning_rate == PRESETS["lora"].learning_rate
    # the train block itself is what the recipe says (None: not set); what a run stores has the rate filled in
    assert overridden.train.learning_rate is None and TrainArgs().learning_rate is None
    assert overridden.to_dict()["train"]["learning_rate"] == PRESETS["lora"].learning_rate


def test_booster_init_defaults_to_the_method_preset_and_runs_store_it_resolved() -> None:
    for method, preset in PRESETS.items():
        recipe = make(method=method)
        assert recipe.booster_init is None  # what the recipe says
        assert resolve_plan(recipe, 30).booster_init == preset.booster_init
        assert recipe.to_dict()["booster_init"] == preset.booster_init  # what a run stores: the value it used
    for init in ("random", "gradient"):
        recipe = make(method="xgblora", booster_init=init)
        assert resolve_plan(recipe, 30).booster_init == init and recipe.to_dict()["booster_init"] == init
    with pytest.raises(UserError, match="booster_init: must be one of random, gradient"):
        make(booster_init="svd")


def test_rewarmup_defaults_to_the_method_preset_and_runs_store_it_resolved() -> None:
    for method, preset in PRESETS.items():
        recipe = make(method=method)
        assert recipe.train.rewarmup_steps is None  # what the recipe says
        assert recipe.rewarmup_steps == preset.rewarmup_steps == recipe.to_dict()["train"]["rewarmup_steps"]
    assert PRESETS["lora"].rewarmup_steps == PRESETS["cola"].rewarmup_steps == 0
    for steps in (0, 5):  # an explicit value, none included, beats the preset
        recipe = make(method="xgblora", train={"rewarmup_steps": steps})
        assert recipe.rewarmup_steps == steps and recipe.to_dict()["train"]["rewarmup_steps"] == steps
    with pytest.raises(UserError, match="train.rewarmup_steps: must be >= 0, got -1"):
        make(train={"rewarmup_steps": -1})


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_loads_and_names_its_command(path: Path) -> None:
    recipe = load_recipe(path)
    assert isinstance(recipe.train, TrainArgs)
    first = path.read_text().splitlines()[0]
    launcher = "torchrun --nproc_per_node " if recipe.train.sharding == "fsdp" else ""
    assert first.startswith("# Run: " + (f"{launcher}" if not launcher else launcher)), first
    assert first.endswith(("xgblora train recipes/" if not launcher else "-m xgblora_cli train recipes/") + path.name), first


def test_recipes_exist() -> None:
    assert any(p.name == "quickstart.yaml" for p in RECIPES)


def test_overrides_reach_nested_keys_and_parse_values() -> None:
    recipe = recipe_from_dict(BASE, "r.yaml", ["train.learning_rate=1e-4", "rank=2", "method=cola", "target_modules=q_proj,v_proj"])
    assert recipe.train.learning_rate == pytest.approx(1e-4)
    assert recipe.rank == 2 and recipe.method == "cola"
    assert recipe.target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    ("fields", "overrides", "expected"),
    [
        ({"rnak": 1}, [], "r.yaml: rnak: unknown key (did you mean 'rank'?)"),
        ({"train": {"lerning_rate": 1}}, [], "train.lerning_rate: unknown key (did you mean 'train.learning_rate'?)"),
        ({"rank": "one"}, [], "r.yaml: rank: expected an integer, got 'one'"),
        ({"rank": 0}, [], "r.yaml: rank: must be >= 1, got 0"),
        ({"train": {"learning_rate": -1}}, [], "train.learning_rate: must be > 0"),
        ({"method": "dora"}, [], "method: must be one of xgblora, cola, lora"),
        ({"steps_per_booster": 500}, [], "steps_per_booster: must be <= train.max_steps (100)"),
        ({"layers_per_booster": "some"}, [], "layers_per_booster: must be an integer >= 1 or 'all'"),
        ({"average_last": -1}, [], "r.yaml: average_last: must be >= 0, got -1"),
        ({"train": 3}, [], "train: expected a mapping of settings"),
        ({}, ["train.max_steps"], "override 'train.max_steps': an override must look like dotted.key=value"),
        ({}, ["train.max_steps=0"], "train.max_steps: must be >= 1, got 0"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(fields, overrides, expected) -> None:
    with pytest.raises(UserError) as info:
        recipe_from_dict({**BASE, **fields}, "r.yaml", overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_required_key() -> None:
    with pytest.raises(UserError, match="r.yaml: model: is required"):
        recipe_from_dict({"dataset": "d", "output_dir": "o"}, "r.yaml")


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: m\ntrain: [unclosed\n")
    with pytest.raises(UserError, match=r"bad.yaml: not valid YAML \(line"):
        load_recipe(path)


def test_presets_are_values_of_one_loop() -> None:
    steps = {"train": {"max_steps": 90}}
    xgb = resolve_plan(make(method="xgblora", **steps), num_layers=30)
    cola = resolve_plan(make(method="cola", **steps), num_layers=30)
    lora = resolve_plan(make(method="lora", **steps), num_layers=30)
    assert (xgb.rank, xgb.layers_per_booster, xgb.steps_per_booster, xgb.num_boosters) == (2, 4, 10, 9)
    assert (cola.rank, cola.layers_per_booster, cola.steps_per_booster, cola.num_boosters) == (8, 30, 30, 3)
    assert (lora.rank, lora.layers_per_booster, lora.steps_per_booster, lora.num_boosters) == (8, 30, 90, 1)
    assert xgb.scale == 2.0


def test_explicit_values_beat_the_preset_and_T_rounds_up() -> None:
    plan = resolve_plan(make(rank=2, alpha=8, layers_per_booster=3, steps_per_booster=7), num_layers=12)
    assert (plan.rank, plan.scale, plan.layers_per_booster, plan.num_boosters) == (2, 4.0, 3, 15)


def test_k_larger_than_the_model_is_refused() -> None:
    with pytest.raises(ValueError, match="layers_per_booster: must be <= the model's 4 blocks, got 6"):
        resolve_plan(make(layers_per_booster=6), num_layers=4)


def test_averaging_more_boosters_than_the_run_has_is_refused() -> None:
    assert resolve_plan(make(average_last=10, train={"max_steps": 100}), num_layers=30).average_last == 10
    with pytest.raises(ValueError, match="average_last: must be <= the run's 10 boosters"):
        resolve_plan(make(average_last=11, train={"max_steps": 100}), num_layers=30)


def test_every_recipe_field_has_a_docstring_and_the_docs_table_is_generated_from_them() -> None:
    """litgpt's style: a docstring under every field; docs/training.md's recipe-keys table is scripts/recipe_keys.py's
    output from those docstrings, so the two cannot drift apart."""
    import dataclasses
    import subprocess
    import sys

    for cls in (Recipe, TrainArgs, EvalArgs):
        missing = [f.name for f in dataclasses.fields(cls) if not field_docs(cls).get(f.name)]
        assert not missing, f"{cls.__name__}: no docstring under {missing}"
    table = subprocess.run([sys.executable, str(ROOT / "scripts" / "recipe_keys.py")], capture_output=True, text=True, check=True).stdout
    readme = (ROOT / "docs" / "training.md").read_text()
    start, end = "<!-- recipe-keys:start -->\n", "<!-- recipe-keys:end -->"
    assert start in readme and readme.split(start, 1)[1].split(end, 1)[0] == table, "run: python scripts/recipe_keys.py --write"
