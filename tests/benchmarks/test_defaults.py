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


TABLE = f"""# B

{bench_defaults.START}
| method | rate | SST-2 val. (seed 0) | RTE val. (seed 0) | worst relative | |
|---|---|---|---|---|---|
| cola | 0.0003 | 79.25 | 51.33 | 0.92 |  |
| cola | **0.001** | 83.50 | 55.67 | 0.97 | the rule's pick, shipped default |
| lora | 0.01 | 50.00 | - | - |  |
{bench_defaults.END}
"""


def test_a_table_ruling_on_fewer_rates_than_the_doc_is_not_written(tmp_path: Path, monkeypatch) -> None:
    """A clean clone with the record (or a partial benchmark) has fewer runs than the table: it stays as it is."""
    doc, work = tmp_path / "benchmarks.md", tmp_path / "work"
    doc.write_text(TABLE)
    assert bench_defaults.ruled_in(TABLE) == {("cola", 3e-4), ("cola", 1e-3)}  # lora 0.01 has no worst-case value
    for task, accuracy in (("sst2", 0.835), ("rte", 0.5567)):
        _val(work / task / "cola_lr0.001_s0", accuracy)
    (work / "sst2" / "cola_lr0.001_s0" / "bench_wall_s.txt").write_text("1")
    monkeypatch.setattr("sys.argv", ["bench_defaults.py", "--work", str(work), "--doc", str(doc)])
    with pytest.raises(SystemExit, match="lacks the seed-0 validation runs of 1 rate.*cola 0.0003"):
        bench_defaults.main()
    assert doc.read_text() == TABLE
    for task, accuracy in (("sst2", 0.7925), ("rte", 0.5133)):
        _val(work / task / "cola_lr0.0003_s0", accuracy)
    bench_defaults.main()  # every rate the table rules on is here: rewritten
    assert "the rule picks: xgblora: none scored on both yet, cola 0.001" in doc.read_text().lower()
