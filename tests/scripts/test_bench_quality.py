"""The quality benchmark's data cut (scripts/benchlib.py): class-balanced, validation never overlaps training, the
same draw every time, and SST-2's cut is the slice shipped in data/."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.scripts import load_script

benchlib = load_script("benchlib")


def _fake_rte(root: Path) -> Path:
    folder = root / "RTE"
    folder.mkdir(parents=True)
    lines = ["index\tsentence1\tsentence2\tlabel"]
    lines += [f"{i}\tPremise {i}.\tHypothesis {i}.\t{'entailment' if i % 3 else 'not_entailment'}" for i in range(90)]
    lines += ["90\tbroken row"]
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_cut_is_balanced_disjoint_and_seeded(tmp_path: Path) -> None:
    glue = _fake_rte(tmp_path)
    budget = benchlib.TaskBudget("rte", train=20, val=5, steps=10, batch=2, seq=64)
    train, val = benchlib.cut_glue(glue, budget)
    assert len(train) == 40 and len(val) == 10
    assert sorted(r["label"] for r in val) == ["entailment"] * 5 + ["not_entailment"] * 5
    assert not {r["index"] for r in train} & {r["index"] for r in val}
    again = benchlib.cut_glue(glue, budget)
    assert again == (train, val)


def test_balanced_leaves_out_short_rows() -> None:
    rows = [{"sentence": "a b", "label": "0"}, {"sentence": "one two three", "label": "0"}, {"sentence": "x y z w", "label": "1"}]
    (part,) = benchlib.balanced(rows, [1], random.Random(0), min_words=3)
    assert sorted(r["sentence"] for r in part) == ["one two three", "x y z w"]


def test_the_shipped_sst2_slice_is_the_benchmarks_cut() -> None:
    glue = benchlib.GLUE_DIR
    if not (glue / "SST-2" / "train.tsv").is_file():  # a user's clone without ../shared: compare what can be compared
        shipped = [json.loads(line) for line in (ROOT / "data" / "sst2_train_2000.jsonl").read_text().splitlines()]
        assert sum(r["answer"] == "positive" for r in shipped) == 1000
        return
    train, val = benchlib.cut_glue(glue, load_script("bench_quality").BUDGETS["sst2"])
    for name, rows in (("sst2_train_2000.jsonl", train), ("sst2_val_400.jsonl", val)):
        expected = "".join(json.dumps(benchlib.to_record("sst2", row)) + "\n" for row in rows)
        assert (ROOT / "data" / name).read_text() == expected


def test_a_missing_glue_folder_is_one_line_naming_glue(tmp_path: Path) -> None:
    budget = benchlib.TaskBudget("rte", train=20, val=5, steps=10, batch=2, seq=64)
    with pytest.raises(SystemExit, match=r"RTE/train.tsv: not found.*--glue"):
        benchlib.cut_glue(tmp_path / "nowhere", budget)


def test_report_only_never_writes_an_unfinished_table(tmp_path: Path, monkeypatch) -> None:
    """--report-only on runs that do not cover the table (a clean clone with the record) leaves the doc alone."""
    bench_quality = load_script("bench_quality")
    monkeypatch.setitem(bench_quality.BUDGETS, "rte", benchlib.TaskBudget("rte", train=20, val=5, steps=10, batch=2, seq=64))
    glue, work, doc = _fake_rte(tmp_path / "glue"), tmp_path / "work", tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\n{bench_quality.START}\nthe measured tables\n{bench_quality.END}\n")
    finished = work / "rte" / "lora_lr0.001_s0"
    finished.mkdir(parents=True)
    (finished / "bench_wall_s.txt").write_text("1")
    monkeypatch.setattr("sys.argv", ["bench_quality.py", "--report-only", "--tasks", "rte", "--glue", str(glue),
                                     "--work", str(work), "--doc", str(doc)])
    with pytest.raises(SystemExit, match=r"not finished in .*: rte base .* is left as it is"):
        bench_quality.main()
    assert "the measured tables" in doc.read_text()
