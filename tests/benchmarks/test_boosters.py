"""The boosters benchmark (benchmarks/boosters.py): its records merge, and its tables render from them alone."""

from __future__ import annotations

import json

import pytest

import benchmarks.boosters as bench_boosters
from xgblora_cli.recipe import PRESETS


def record(variant: str, seed: int, acc: float, task: str = "sst2", steps: int = 100, test: float | None = None) -> dict:
    out = {"task": task, "steps": steps, "variant": variant, "seed": seed, "method": bench_boosters.VARIANTS[variant][1],
           "lr": bench_boosters.rate(variant), "keys": bench_boosters.VARIANTS[variant][3], "dtype": "bfloat16",
           "step_s": 2.0 if variant != "lora" else 3.0, "val": {"acc": acc, "shares": {"negative": 0.6, "positive": 0.4}}}
    if test is not None:
        out["test"] = {"acc": test, "shares": {"negative": 0.5, "positive": 0.5}}
    return out


def test_each_variant_is_the_fixed_baseline_at_its_rate_with_its_keys() -> None:
    # the baseline stays what it was measured as, whatever the presets become
    assert bench_boosters.rate("preset") == 1e-2 and bench_boosters.BASE_KEYS["xgblora"] == {
        "booster_init": "random", "rank": 1, "train.rewarmup_steps": 0}
    assert bench_boosters.rate("control") == 1e-2  # the control: the old preset's rate
    assert bench_boosters.rate("lora") == PRESETS["lora"].learning_rate
    assert bench_boosters.rate("gradinit_lr3e-3") == 3e-3
    assert bench_boosters.VARIANTS["gradinit"][3] == {"booster_init": "gradient"}
    # the second control is the shipped preset's settings with one booster, so it isolates what merging adds
    _, method, lr, keys = bench_boosters.VARIANTS["control_gradinit_r2_rw5_lr3e-3"]
    preset = PRESETS["xgblora"]
    assert method == "control" and lr == preset.learning_rate
    assert (keys["booster_init"], keys["rank"], keys["train.rewarmup_steps"]) == (preset.booster_init, preset.rank,
                                                                                   preset.rewarmup_steps)
    with pytest.raises(SystemExit):
        bench_boosters.parse_args(["--variants", "nope"])


def test_the_shipped_xgblora_preset_is_the_variant_the_rule_picks_from_the_recorded_study() -> None:
    _, winner = bench_boosters.rule(bench_boosters.load_results(bench_boosters.parse_args([]).results))
    _, method, lr, keys = bench_boosters.VARIANTS[winner]
    measured = {"train.rewarmup_steps": 0, **bench_boosters.BASE_KEYS[method], **keys}  # what the winner's runs were trained with
    preset = PRESETS["xgblora"]
    assert method == "xgblora" and preset.learning_rate == lr
    assert (preset.booster_init, preset.rank, preset.rewarmup_steps) == (
        measured["booster_init"], measured["rank"], measured["train.rewarmup_steps"])
    assert set(keys) <= {"booster_init", "rank", "train.rewarmup_steps"}  # nothing else differs from the preset's k and kappa


def test_records_merge_one_per_run_and_render_as_tables(tmp_path) -> None:
    path = tmp_path / "boosters.json"
    bench_boosters.save_results(path, [record("preset", 0, 80.0), record("lora", 0, 85.0, test=88.0)])
    bench_boosters.save_results(path, [record("preset", 1, 70.0), record("preset", 0, 82.0)])  # seed 0 again: replaced
    runs = bench_boosters.load_results(path)
    assert [(r["variant"], r["seed"], r["val"]["acc"]) for r in runs] == [("preset", 0, 82.0), ("preset", 1, 70.0), ("lora", 0, 85.0)]
    text = bench_boosters.render(runs)
    assert "**SST2, 100 steps**" in text
    assert "| old xgblora preset (random V) (`preset`) | - | 0.01 | 82.0 / 70.0 | **76.0 ± 8.5** | 60%, 60% | - | 1.00x |" in text
    assert "| lora preset (`lora`) | - | 0.001 | 85.0 | **85.0** | 60% | 88.0 (88.0) | 1.50x |" in text
    assert json.loads(path.read_text())["runs"][0]["variant"] == "preset"


def test_the_defaults_rule_takes_the_best_worst_case_over_both_tasks() -> None:
    records = [record("preset", 0, 80.0), record("preset", 1, 70.0), record("gradinit", 0, 82.0),
               record("preset", 0, 55.0, task="rte", steps=400), record("gradinit", 0, 50.0, task="rte", steps=400),
               record("uv4", 0, 90.0), record("lora", 0, 88.0), record("lora", 0, 65.0, task="rte", steps=400),
               record("control_gradinit_r2_rw5_lr3e-3", 0, 95.0),
               record("control_gradinit_r2_rw5_lr3e-3", 0, 70.0, task="rte", steps=400)]
    table, winner = bench_boosters.rule(records)
    # preset: min(75 / 82, 55 / 55) = 0.915; gradinit: min(82 / 82, 50 / 55) = 0.909; uv4 has no RTE; lora is no variant
    assert winner == "preset"
    assert "| old xgblora preset (random V) (`preset`) | 75.0 (n=2) | 55.0 (n=1) | 0.915 | the rule picks it |" in table
    assert "`uv4`" not in table and "`lora`" not in table and "`control_" not in table  # a control is no candidate
