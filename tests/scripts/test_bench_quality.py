"""The quality benchmark's data cut (scripts/bench_quality.py): validation never overlaps training, and a
larger validation split leaves the training mix unchanged."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scripts import load_script

bench_quality = load_script("bench_quality")


def _fake_data(root: Path) -> Path:
    for folder, size in (("ARC-Easy", 60), ("boolq", 45)):
        records = [{"instruction": f"{folder} question {i}", "answer": "answer1"} for i in range(size)]
        (root / folder).mkdir(parents=True)
        (root / folder / "train.json").write_text(json.dumps(records))
    return root


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_extra_validation_keeps_training_mix_and_never_overlaps(tmp_path: Path) -> None:
    data = _fake_data(tmp_path / "data")
    tasks = bench_quality.cut_splits(data, tmp_path / "a", 20, 5, 0)
    assert sorted(tasks) == ["arc_easy", "boolq"]
    bench_quality.cut_splits(data, tmp_path / "b", 20, 5, 30)
    assert _lines(tmp_path / "a" / "train.jsonl") == _lines(tmp_path / "b" / "train.jsonl")
    assert _lines(tmp_path / "a" / "val.jsonl") == _lines(tmp_path / "b" / "val.jsonl")
    train = {json.loads(line)["instruction"] for line in _lines(tmp_path / "b" / "train.jsonl")}
    assert len(train) == 40
    for folder, expected in (("ARC-Easy", 35), ("boolq", 25)):  # boolq runs out: 45 - 5 - 20 = 20 extra
        val = json.loads((tmp_path / "b" / "val_tasks" / folder / "test.json").read_text())
        assert len(val) == expected
        assert not train & {r["instruction"] for r in val}
