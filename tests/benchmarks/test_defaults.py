"""The defaults rule (benchmarks/defaults.py): worst-case relative validation accuracy over the tasks, only rates
scored on every task, ties to the lower rate, and only the plain preset's seed-0 runs read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.defaults as bench_defaults


def test_worst_relative_takes_the_smaller_ratio_over_common_rates() -> None:
    worst = bench_defaults.worst_relative({"sst2": {1e-3: 80.0, 3e-3: 90.0, 1e-2: 50.0}, "rte": {1e-3: 60.0, 3e-3: 48.0}})
    assert worst == pytest.approx({1e-3: min(80 / 90, 60 / 60), 3e-3: min(90 / 90, 48 / 60)})
    assert bench_defaults.pick(worst) == 1e-3


def test_pick_breaks_ties_to_the_lower_rate_and_needs_a_rate() -> None:
    assert bench_defaults.pick({3e-3: 0.9, 1e-3: 0.9, 1e-2: 0.5}) == 1e-3
    assert bench_defaults.pick({}) is None
    assert bench_defaults.worst_relative({"sst2": {1e-3: 80.0}, "rte": {}}) == {}


def _val(folder: Path, accuracy: float) -> None:
    folder.mkdir(parents=True)
    (folder / "val_acc.json").write_text(json.dumps({"tasks": {"choice": {"accuracy": accuracy}}}))


def test_grid_scores_reads_only_the_plain_presets_seed_0(tmp_path: Path) -> None:
    _val(tmp_path / "sst2" / "cola_lr0.001_s0", 0.835)
    _val(tmp_path / "sst2" / "cola_lr0.003_s1", 0.9)  # another seed
    _val(tmp_path / "sst2" / "cola_lr0.003_s0_kappa20", 0.9)  # a setting with extra keys
    _val(tmp_path / "sst2" / "xgblora_lr0.01_s0", 0.75)  # another method
    assert bench_defaults.grid_scores(tmp_path, "sst2", "cola") == pytest.approx({1e-3: 83.5})


def test_scores_are_kept_as_data_and_runs_here_add_to_them(tmp_path: Path, monkeypatch) -> None:
    """A clean clone (no runs) renders the table from the record; runs here add or replace their rates, and a rate
    the runs here lack is kept, never dropped."""
    doc, work, results = tmp_path / "benchmarks.md", tmp_path / "work", tmp_path / "defaults.json"
    doc.write_text(f"# B\n\n{bench_defaults.START}\n{bench_defaults.END}\n")
    bench_defaults.save_scores(results, {"sst2": {"cola": {3e-4: 79.25}}, "rte": {"cola": {3e-4: 154 / 3}}})
    for task, accuracy in (("sst2", 0.835), ("rte", 0.5567)):
        _val(work / task / "cola_lr0.001_s0", accuracy)
    monkeypatch.setattr("sys.argv", ["defaults", "--work", str(work), "--doc", str(doc), "--results", str(results)])
    bench_defaults.main()
    scores = bench_defaults.load_scores(results)
    assert scores["sst2"]["cola"] == {3e-4: 79.25, 1e-3: 83.5} and scores["rte"]["cola"][3e-4] == 154 / 3
    text = doc.read_text()
    assert "| cola | **0.001** | 83.50 | 55.67 | 1.00 | the rule's pick, the default it set |" in text
    assert "| cola | 0.0003 | 79.25 | 51.33 | 0.92 |  |" in text
    monkeypatch.setattr("sys.argv", ["defaults", "--report-only", "--doc", str(doc), "--results", str(results)])
    before = doc.read_text()
    bench_defaults.main()  # from the record alone: the same table
    assert doc.read_text() == before
