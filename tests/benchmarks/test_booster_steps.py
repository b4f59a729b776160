"""benchmarks/booster_steps.py: loss ratios to lora by position inside a booster, read from study runs' metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import benchmarks.booster_steps as booster_steps
from benchmarks.boosters import VARIANTS, rate
from benchmarks.lib import run_name


def fake_run(work: Path, variant: str, seed: int, losses: list[float], tokens: list[int], task: str = "sst2",
             steps: int = 100) -> Path:
    """A finished study run folder of ``variant`` whose step s (1-based) logged ``losses[s - 1]``."""
    _, method, _, keys = VARIANTS[variant]
    folder = work / f"steps{steps}" / task / run_name(method, rate(variant), seed, {"dtype": "bfloat16", **keys})
    folder.mkdir(parents=True)
    rows = [{"step": s + 1, "loss": loss, "lr": 1e-3, "tokens": t} for s, (loss, t) in enumerate(zip(losses, tokens))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "bench_wall_s.txt").write_text("1.0\n")
    return folder


def test_a_first_update_that_hurts_shows_as_a_jump_from_position_1_to_2(tmp_path) -> None:
    steps, tokens = 100, [100 + s for s in range(100)]
    lora = [0.1] * steps
    # each booster: loss 1.1x lora's on its first step, 1.3x after its first update, back to 1.1x by its last
    booster = [0.1 * (1.1 if (s % 10) == 0 else 1.3 if (s % 10) == 1 else 1.1) for s in range(steps)]
    booster[:10] = [9.0] * 10  # the booster inside the warmup: left out
    fake_run(tmp_path, "lora", 0, lora, tokens)
    fake_run(tmp_path, "gradinit_lr3e-3", 0, booster, tokens)
    args = booster_steps.parse_args(["--work", str(tmp_path / "missing"), str(tmp_path), "--tasks", "sst2", "--steps", "100",
                                     "--seeds", "0", "1", "--variants", "gradinit_lr3e-3", "control"])
    records = booster_steps.measure(args)
    assert [(r["variant"], r["seed"], r["from_step"]) for r in records] == [("gradinit_lr3e-3", 0, 11)]  # the control has no run
    ratio = {int(p): math.exp(v) for p, v in records[0]["log_ratio"].items()}
    assert [ratio[1], ratio[2], ratio[10]] == pytest.approx([1.1, 1.3, 1.1], rel=1e-4)  # kept to 5 decimals
    assert records[0]["n"]["1"] == 9  # boosters 2-10
    table = booster_steps.render(records)
    assert "| SST2, 100 | V from the gradient, rate 3e-3 (`gradinit_lr3e-3`) | 1 | 1.10 | 1.30 |" in table
    assert table.rstrip().endswith("| 1.18 | 1.00 |")


def test_runs_that_saw_different_batches_are_refused(tmp_path) -> None:
    lora = fake_run(tmp_path, "lora", 0, [0.1] * 30, [100] * 30)
    other = fake_run(tmp_path, "gradinit_lr3e-3", 0, [0.1] * 30, [100] * 25 + [99] * 5)
    with pytest.raises(ValueError, match="step 26: 99 tokens"):
        booster_steps.position_log_ratios(booster_steps.losses(other), booster_steps.losses(lora), 10, 1)


def test_kappa_and_the_first_counted_step_follow_the_variant_and_the_warmup() -> None:
    assert booster_steps.kappa("gradinit_kappa5_lr3e-3") == 5 and booster_steps.kappa("gradinit_lr3e-3") == 10
    assert booster_steps.first_counted_step(100, 10) == 11  # warmup 10 steps: the first booster is inside it
    assert booster_steps.first_counted_step(400, 10) == 41  # warmup 40 steps
    assert booster_steps.first_counted_step(100, 5) == 11
    assert booster_steps.first_counted_step(100, 15) == 16  # a booster that starts inside the warmup is left out whole
    with pytest.raises(SystemExit):
        booster_steps.parse_args(["--variants", "lora"])
