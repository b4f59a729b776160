"""The bf16-base benchmark (benchmarks/dtype.py): the run names it shares with
bench_quality, and the speed-up it reports."""

from __future__ import annotations

import benchmarks.dtype as bench_dtype


def test_float32_runs_are_bench_qualitys_own_and_bf16_runs_are_named_apart() -> None:
    import benchmarks.lib as benchlib
    assert benchlib.run_name("lora", 1e-3, 0, bench_dtype.extra("float32")) == "lora_lr0.001_s0"
    assert benchlib.run_name("lora", 1e-3, 0, bench_dtype.extra("bfloat16")) == "lora_lr0.001_s0_dtypebfloat16"


def test_table_reports_the_median_and_range_of_one_ratio_per_round() -> None:
    times = {"xgblora float32": [10.0, 12.0], "xgblora bfloat16": [5.0, 6.0], "lora float32": [9.0],
             "xgblora float32 eval": [30.0, 30.0], "xgblora bfloat16 eval": [10.0, 20.0]}
    accs = {"xgblora float32": [75.0, 79.25], "xgblora bfloat16": [77.0, None]}
    body, speedups = bench_dtype.table(["xgblora", "lora"], times, accs)
    assert speedups == {"xgblora": 2.0}  # lora has no bf16 time yet: no ratio
    rows = body.splitlines()[2:]
    # scoring: 30/10 = 3 in round 1, 30/20 = 1.5 in round 2 (a ratio of medians would say 2.0)
    assert rows[1] == "| xgblora (0.01) | bfloat16 | 5.00 / 6.00 | 2.00x (2.00-2.00) | 10.00 / 20.00 | 2.25x (1.50-3.00) | 77.0 | 77.0 - |"
    assert rows[0] == "| xgblora (0.01) | float32 | 10.00 / 12.00 | 1x | 30.00 / 30.00 | 1x | 77.1 ± 3.0 | 75.0 79.2 |"
    assert rows[3] == "| lora (0.001) | bfloat16 |  | - |  | - | not run yet |  |"


def test_per_round_pairs_rounds_that_both_dtypes_measured() -> None:
    times = {"lora float32": [9.0, 8.0, 7.0], "lora bfloat16": [3.0, 4.0]}
    assert bench_dtype.per_round(times, "lora", "") == [3.0, 2.0]
    assert bench_dtype.per_round(times, "xgblora", "") == []
