"""The sensitivity benchmark's rows (benchmarks/sensitivity.py): xgblora's rate grid, then the cola and lora
presets' grids (``--preset-grids``), then the variants at ``--lr``, each row trained with its own method."""

from __future__ import annotations

import argparse

import pytest

import benchmarks.sensitivity as bench_sensitivity


def test_preset_grid_parses_a_method_and_its_rates_and_names_what_is_allowed() -> None:
    assert bench_sensitivity.preset_grid("cola=1e-3,3e-3") == ("cola", [1e-3, 3e-3])
    with pytest.raises(argparse.ArgumentTypeError, match="expected cola=LR,LR or lora=LR,LR"):
        bench_sensitivity.preset_grid("xgblora=1e-2")
    with pytest.raises(argparse.ArgumentTypeError, match="the rates must be numbers"):
        bench_sensitivity.preset_grid("lora=fast")


def test_rows_keep_their_method_and_order() -> None:
    args = argparse.Namespace(grid=[1e-2], preset_grids=[("lora", [1e-3, 3e-3]), ("cola", [1e-3])], lr=1e-2, variants=["k8"],
                              with_keys=[])
    rows = bench_sensitivity.settings(args)
    assert [(label, method, lr) for label, method, lr, _ in rows] == [
        ("xgblora lr 0.01", "xgblora", 1e-2), ("lora lr 0.001", "lora", 1e-3), ("lora lr 0.003", "lora", 3e-3),
        ("cola lr 0.001", "cola", 1e-3), ("k = 8, lr 0.01", "xgblora", 1e-2)]
    assert rows[-1][3] == {"layers_per_booster": 8} and rows[0][3] is None


ROWS = {("sst2", "xgblora lr 0.01"): {0: 75.0, 1: 79.25, 2: 66.5}, ("sst2", "k = 8, lr 0.01"): {0: 80.75, 2: 78.5}}
LONGS = {("sst2", "xgblora lr 0.01, 400 steps"): [(50, 58.0), (100, 51.7)], ("rte", "xgblora lr 0.01, 400 steps"): None}
WRITTEN = {"command": "python -m benchmarks sensitivity --seeds 0 1 2", "lr": 0.01, "seeds": [0, 1, 2], "kept": False}


def recorded(tmp_path):
    """A record as an earlier invocation left it, and a doc to render into."""
    results = tmp_path / "sensitivity.json"
    bench_sensitivity.save_record(results, ROWS, LONGS, WRITTEN)
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\n{bench_sensitivity.START}\n{bench_sensitivity.END}\n\nprose after\n")
    return results, doc


def test_the_record_keeps_every_number_and_the_table_is_rendered_from_it(tmp_path) -> None:
    results, doc = recorded(tmp_path)
    rows, longs, written = bench_sensitivity.load_record(results)
    assert (rows, longs, written) == (ROWS, LONGS, WRITTEN)
    args = partial_args(doc, seeds=[0, 1, 2], tasks=["sst2"])
    body = bench_sensitivity.render(args, rows, longs, written)
    assert "| sst2 | xgblora lr 0.01 | 73.6 ± 6.5 | 75.0 79.2 66.5 |" in body  # 79.25 shown as 79.2
    assert "| sst2 | k = 8, lr 0.01 | 79.6 ± 1.6 (+8.9) | 80.8 - 78.5 |" in body  # the shift on seeds 0 and 2
    assert "| sst2 | xgblora lr 0.01, 400 steps, by step | 50: 58.0, 100: 51.7 | seed 0 |" in body
    assert "| rte | xgblora lr 0.01, 400 steps | not run yet | |" in body


def partial_args(doc, **changes) -> argparse.Namespace:
    """A partial invocation: RTE, seed 1, one variant."""
    values = dict(tasks=["rte"], seeds=[1], grid=[], preset_grids=[], lr=1e-2, variants=["kappa5"], doc=doc, fresh=False,
                  with_keys=[], results=None)
    return argparse.Namespace(**{**values, **changes})


def test_a_partial_invocation_adds_its_rows_and_keeps_the_others(tmp_path) -> None:
    """--tasks rte --seeds 1 --variants kappa5 used to rewrite the table as that one row, losing every other."""
    results, doc = recorded(tmp_path)
    args = partial_args(doc, results=results)
    body = bench_sensitivity.write(args, {("rte", "kappa = 5, lr 0.01"): {1: 52.0}}, {})
    rows, longs, written = bench_sensitivity.load_record(results)
    assert {key: row for key, row in rows.items() if key[0] == "sst2"} == ROWS
    assert rows[("rte", "kappa = 5, lr 0.01")] == {1: 52.0} and longs == LONGS
    assert written["kept"] and written["seeds"] == [0, 1, 2]
    assert "seeds 0 1 2. Rows, seeds and long runs it did not cover are kept" in body
    assert doc.read_text().endswith("prose after\n")


def test_each_rewrite_keeps_rows_another_process_wrote_since(tmp_path) -> None:
    """Two processes sharing one record: each rewrite reads the record as it is then, not as it was at the start."""
    results, doc = recorded(tmp_path)
    args = partial_args(doc, results=results)
    bench_sensitivity.write(args, {("rte", "kappa = 5, lr 0.01"): {1: 52.0}}, {})
    bench_sensitivity.write(partial_args(doc, results=results, variants=["rank2"]), {("rte", "rank 2, lr 0.01"): {1: 50.0}}, {})
    bench_sensitivity.write(args, {("rte", "kappa = 5, lr 0.01"): {1: 52.0}, ("rte", "k = 2, lr 0.01"): {1: 51.0}}, {})
    rows = bench_sensitivity.load_record(results)[0]
    assert rows[("rte", "rank 2, lr 0.01")] == {1: 50.0} and rows[("rte", "k = 2, lr 0.01")] == {1: 51.0}


def test_fresh_writes_only_this_invocations_rows(tmp_path) -> None:
    results, doc = recorded(tmp_path)
    body = bench_sensitivity.write(partial_args(doc, results=results, fresh=True), {("rte", "kappa = 5, lr 0.01"): {1: 52.0}}, {})
    rows, longs, written = bench_sensitivity.load_record(results)
    assert (rows, longs, written["kept"]) == ({("rte", "kappa = 5, lr 0.01"): {1: 52.0}}, {}, False)
    assert "kept" not in body


def test_rows_come_in_one_order_whatever_the_invocation() -> None:
    args = partial_args(None, variants=["k2", "kappa20"], grid=[1e-2])
    results = {("rte", "k = 2, lr 0.01"): {1: 52.0}, ("sst2", "made up row"): {1: 1.0},
               ("rte", "kappa = 20, lr 0.01"): {1: 51.0}, ("rte", "xgblora lr 0.01"): {1: 50.0},
               ("sst2", "k = 8, lr 0.01"): {1: 80.0}}
    assert bench_sensitivity.row_order(args, results) == [
        ("sst2", "k = 8, lr 0.01"), ("sst2", "made up row"), ("rte", "xgblora lr 0.01"),
        ("rte", "kappa = 20, lr 0.01"), ("rte", "k = 2, lr 0.01")]
    assert bench_sensitivity.long_order(("rte", "lora lr 0.001, 400 steps")) < bench_sensitivity.long_order(
        ("sst2", "xgblora lr 0.01, 600 steps"))


def test_with_keys_go_into_every_row_and_shifts_compare_rows_with_the_same_keys() -> None:
    assert bench_sensitivity.recipe_key("train.packing=true") == ("train.packing", "true")
    with pytest.raises(argparse.ArgumentTypeError, match="expected KEY=VALUE"):
        bench_sensitivity.recipe_key("train.packing")
    args = partial_args(None, tasks=["sst2"], seeds=[0], grid=[1e-2], preset_grids=[("lora", [1e-3])], variants=["k8"],
                        with_keys=[("train.packing", "true"), ("train.batch_size", "3")])
    rows = bench_sensitivity.settings(args)
    assert [label for label, *_ in rows] == ["xgblora lr 0.01 [packing=true batch_size=3]",
                                             "lora lr 0.001 [packing=true batch_size=3]",
                                             "k = 8, lr 0.01 [packing=true batch_size=3]"]
    assert rows[1][3] == {"train.packing": "true", "train.batch_size": "3"}
    assert rows[2][3] == {"train.packing": "true", "train.batch_size": "3", "layers_per_booster": 8}
    results = {("sst2", "xgblora lr 0.01"): {0: 50.0}, ("sst2", rows[0][0]): {0: 80.0}, ("sst2", rows[2][0]): {0: 85.0}}
    lines = bench_sensitivity.table_lines(args, results)
    assert lines[-1] == "| sst2 | k = 8, lr 0.01 [packing=true batch_size=3] | 85.0 (+5.0) | 85.0 |"  # against 80.0, not 50.0
    assert bench_sensitivity.long_order(("sst2", "lora lr 0.001, 400 steps [packing=true]"))[:3] == (400, 0, True)


def test_report_only_keeps_what_the_record_holds_when_the_runs_are_not_here(tmp_path) -> None:
    """A clean clone (empty work folder) regenerating the table loses no number, and adds none."""
    runner = bench_sensitivity.Runner(report_only=True)
    budget = bench_sensitivity.BUDGETS["sst2"]
    bench = argparse.Namespace(runner=runner, work=tmp_path / "work", budget=budget,
                               data={"train": tmp_path / "train.jsonl", "val": tmp_path / "val.jsonl"})
    (bench.work / "sst2").mkdir(parents=True)
    results_file, doc = recorded(tmp_path)
    args = argparse.Namespace(tasks=["sst2"], seeds=[0, 1, 2], grid=[1e-2], preset_grids=[], lr=1e-2,
                              variants=["k8", "kappa5"], doc=doc, fresh=False, with_keys=[], results=results_file)
    results = bench_sensitivity.measure({"sst2": bench}, args, {})
    assert results == {("sst2", label): {0: None, 1: None, 2: None}
                       for label in ("xgblora lr 0.01", "k = 8, lr 0.01", "kappa = 5, lr 0.01")}
    body = bench_sensitivity.write(args, results, {})
    rows = bench_sensitivity.load_record(results_file)[0]
    assert {key: row for key, row in rows.items() if row} == ROWS  # nothing lost, nothing invented
    assert "| sst2 | kappa = 5, lr 0.01 | not run yet | |" in body
    args.fresh = True  # an empty record instead: nothing of the old one
    assert "73.6" not in bench_sensitivity.write(args, results, {})


def test_long_runs_default_to_both_and_a_zero_rate_leaves_a_method_out() -> None:
    args = argparse.Namespace(lr=1e-2, long_xgblora=None, long_lora=1e-3)
    assert bench_sensitivity.long_runs(args) == [("xgblora", 1e-2), ("lora", 1e-3)]
    args.long_xgblora = 0.0  # lora's long run alone, when xgblora's is already in the table
    assert bench_sensitivity.long_runs(args) == [("lora", 1e-3)]
    args.long_xgblora, args.long_lora = 3e-3, 0.0
    assert bench_sensitivity.long_runs(args) == [("xgblora", 3e-3)]
