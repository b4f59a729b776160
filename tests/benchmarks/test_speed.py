"""The speed benchmark's correction for xgblora's random backward depth (benchmarks/speed.py)."""

from __future__ import annotations

import statistics

import pytest

import benchmarks.speed as bench_speed
from xgblora_cli.core.boosting import booster_blocks


@pytest.mark.parametrize(("num_layers", "k"), [(30, 4), (32, 2), (12, 6)])
def test_mean_lowest_matches_the_engines_draws(num_layers: int, k: int) -> None:
    drawn = [min(booster_blocks(seed, index, num_layers, k)) for seed in range(20) for index in range(100)]
    assert statistics.mean(drawn) == pytest.approx(bench_speed.mean_lowest(num_layers, k), abs=0.2)


def test_step_at_mean_depth_reads_the_fitted_line() -> None:
    lowest = [0, 2, 8, 10]
    steps = [{"forward+loss": 5.0, "backward": 3.0 - 0.1 * low, "optimizer": 0.0} for low in lowest]
    assert bench_speed.step_at_mean_depth(steps, lowest, 30, 4) == pytest.approx(8.0 - 0.1 * 5.2)
    assert bench_speed.step_at_mean_depth(steps[:1] * 3, [3, 3, 3], 30, 4) is None


def test_a_booster_started_from_the_gradient_pays_its_probe_over_kappa(tiny_model_dir) -> None:
    import argparse

    args = argparse.Namespace(model=str(tiny_model_dir), batch=2, seq=16, steps=3, k=2, rank=1, seed=0, checkpointing=False, dtype="float32",
                              booster_init="gradient", block_schedule="gradient", init_batches=1, kappa=10)
    result = bench_speed.run_one("xgblora", args)
    assert all(step["probe"] > 0 for step in result["steps"])  # timed, and divided by kappa
    fused = bench_speed.run_one("xgblora", argparse.Namespace(**{**vars(args), "block_schedule": "random"}))
    assert all(step["probe"] > 0 for step in fused["steps"])  # V set inside the first step: its power iteration
    plain = bench_speed.run_one("xgblora", argparse.Namespace(**{**vars(args), "booster_init": "random", "block_schedule": "random"}))
    assert all(step["probe"] < 1e-3 for step in plain["steps"])  # nothing between backward and the optimizer


def test_a_boosters_first_step_counts_once_in_kappa_and_its_start_is_divided_by_kappa() -> None:
    first = {"forward+loss": 2.0, "backward": 1.5, "optimizer": 0.1, "probe": 0.3}
    later = {"forward+loss": 1.0, "backward": 0.5, "optimizer": 0.2, "probe": 0.0}
    step = bench_speed.amortised(first, later, probe_s=0.7, kappa=10)
    assert step == pytest.approx({"forward+loss": 1.1, "backward": 0.6, "optimizer": 0.19, "probe": 0.1})
    alone = bench_speed.amortised(first, None, probe_s=0.7, kappa=10)  # no hooks in the step: it is every step
    assert alone == pytest.approx({**first, "probe": 0.1})
