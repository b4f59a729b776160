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


TABLE = """Command: `python -m benchmarks sensitivity --seeds 0 1 2`; validation accuracy (%), seeds 0 1 2.

| task | setting | validation accuracy, mean ± sd (vs the preset at the rate, same seeds) | by seed |
|---|---|---|---|
| sst2 | xgblora lr 0.01 | 73.6 ± 6.5 | 75.0 79.2 66.5 |
| sst2 | k = 8, lr 0.01 | 80.8 ± 2.2 (+7.2) | 80.8 - 78.5 |
| rte | kappa = 5, lr 0.01 | not run yet | |
| rte | xgblora lr 0.01, 400 steps | not run yet | |
| sst2 | xgblora lr 0.01, 400 steps, by step | 50: 58.0, 100: 51.7 | seed 0 |
"""


def test_shown_reads_each_seed_undoes_the_rounding_and_keeps_long_lines_whole() -> None:
    accs, long_lines = bench_sensitivity.shown(TABLE, {"sst2": 400})
    assert accs == {("sst2", "xgblora lr 0.01"): {0: 75.0, 1: 79.25, 2: 66.5},
                    ("sst2", "k = 8, lr 0.01"): {0: 80.75, 2: 78.5}}  # 79.2 of 400 records is 317, 79.25%
    assert long_lines == {("sst2", "xgblora lr 0.01, 400 steps"): TABLE.splitlines()[-1],
                          ("rte", "xgblora lr 0.01, 400 steps"): TABLE.splitlines()[-2]}  # a long run not run yet: kept
    assert bench_sensitivity.shown(TABLE, {})[0][("sst2", "xgblora lr 0.01")][1] == 79.2  # size unknown: as shown


def partial_args(doc, **changes) -> argparse.Namespace:
    """A partial invocation: RTE, seed 1, one variant."""
    values = dict(tasks=["rte"], seeds=[1], grid=[], preset_grids=[], lr=1e-2, variants=["kappa5"], doc=doc, fresh=False,
                  with_keys=[])
    return argparse.Namespace(**{**values, **changes})


def doc_with(tmp_path, table: str):
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\n{bench_sensitivity.START}\n{table}{bench_sensitivity.END}\n\nprose after\n")
    return doc


def table_of(doc) -> str:
    return doc.read_text().split(bench_sensitivity.START)[1].split(bench_sensitivity.END)[0]


def test_a_partial_invocation_adds_its_rows_and_keeps_the_others(tmp_path) -> None:
    """--tasks rte --seeds 1 --variants kappa5 used to rewrite the table as that one row, losing every other."""
    doc = doc_with(tmp_path, TABLE)
    args = partial_args(doc)
    bench_sensitivity.write(args, {("rte", "kappa = 5, lr 0.01"): {1: 52.0}}, {})
    table = table_of(doc)
    accs, long_lines = bench_sensitivity.shown(table, {"sst2": 400, "rte": 300})
    before = bench_sensitivity.shown(TABLE, {"sst2": 400})
    assert {key: row for key, row in accs.items() if key[0] == "sst2"} == before[0]
    assert accs[("rte", "kappa = 5, lr 0.01")] == {1: 52.0}
    assert long_lines == before[1]
    assert "seeds 0 1 2. Rows, seeds and long runs it did not cover are kept" in table
    assert doc.read_text().endswith("prose after\n")


def test_each_rewrite_keeps_rows_another_process_wrote_since(tmp_path) -> None:
    """Two processes sharing one --doc: each rewrite reads the table as it is then, not as it was at the start."""
    doc = doc_with(tmp_path, TABLE)
    args = partial_args(doc)
    bench_sensitivity.write(args, {("rte", "kappa = 5, lr 0.01"): {1: 52.0}}, {})
    other = partial_args(doc, variants=["rank2"])
    bench_sensitivity.write(other, {("rte", "rank 2, lr 0.01"): {1: 50.0}}, {})
    bench_sensitivity.write(args, {("rte", "kappa = 5, lr 0.01"): {1: 52.0}, ("rte", "k = 2, lr 0.01"): {1: 51.0}}, {})
    accs = bench_sensitivity.shown(table_of(doc), {"sst2": 400, "rte": 300})[0]
    assert accs[("rte", "rank 2, lr 0.01")] == {1: 50.0} and accs[("rte", "k = 2, lr 0.01")] == {1: 51.0}


def test_fresh_writes_only_this_invocations_rows(tmp_path) -> None:
    doc = doc_with(tmp_path, TABLE)
    bench_sensitivity.write(partial_args(doc, fresh=True), {("rte", "kappa = 5, lr 0.01"): {1: 52.0}}, {})
    table = table_of(doc)
    assert bench_sensitivity.shown(table, {"rte": 300}) == ({("rte", "kappa = 5, lr 0.01"): {1: 52.0}}, {})
    assert "kept" not in table


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


def test_report_only_keeps_what_the_table_showed_when_the_runs_are_not_here(tmp_path) -> None:
    """A clean clone (empty work folder) regenerating the table loses no number, and adds none."""
    runner = bench_sensitivity.Runner(report_only=True)
    budget = bench_sensitivity.BUDGETS["sst2"]
    bench = argparse.Namespace(runner=runner, work=tmp_path / "work", budget=budget,
                               data={"train": tmp_path / "train.jsonl", "val": tmp_path / "val.jsonl"})
    (bench.work / "sst2").mkdir(parents=True)
    doc = doc_with(tmp_path, TABLE)
    args = argparse.Namespace(tasks=["sst2"], seeds=[0, 1, 2], grid=[1e-2], preset_grids=[], lr=1e-2,
                              variants=["k8", "kappa5"], doc=doc, fresh=False, with_keys=[])
    results = bench_sensitivity.measure({"sst2": bench}, args, {})
    assert results == {("sst2", label): {0: None, 1: None, 2: None}
                       for label in ("xgblora lr 0.01", "k = 8, lr 0.01", "kappa = 5, lr 0.01")}
    lines = bench_sensitivity.write(args, results, {})
    assert lines[0] == "| sst2 | xgblora lr 0.01 | 73.6 ± 6.5 | 75.0 79.2 66.5 |"
    assert lines[1].startswith("| sst2 | k = 8, lr 0.01 | 79.6 ± 1.6 (+8.9) | 80.8 - 78.5 |")  # shift on seeds 0, 2
    assert lines[2] == "| sst2 | kappa = 5, lr 0.01 | not run yet | |"
    assert bench_sensitivity.shown(table_of(doc), {"sst2": 400}) == bench_sensitivity.shown(TABLE, {"sst2": 400})
    args.fresh = True  # an empty table instead: nothing of the old one
    assert all("not run yet" in line for line in bench_sensitivity.write(args, results, {}))


def test_long_runs_default_to_both_and_a_zero_rate_leaves_a_method_out() -> None:
    args = argparse.Namespace(lr=1e-2, long_xgblora=None, long_lora=1e-3)
    assert bench_sensitivity.long_runs(args) == [("xgblora", 1e-2), ("lora", 1e-3)]
    args.long_xgblora = 0.0  # lora's long run alone, when xgblora's is already in the table
    assert bench_sensitivity.long_runs(args) == [("lora", 1e-3)]
    args.long_xgblora, args.long_lora = 3e-3, 0.0
    assert bench_sensitivity.long_runs(args) == [("xgblora", 3e-3)]
