"""``xgblora sweep``: a held-out cut of the recipe's own data, one run per rate scored on it, the best reported;
resumable (its bad input: tests/test_errors.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import TRAIN_DATA, run_cli, tiny_recipe, write_recipe
from xgblora_cli.sweep import SweepPoint, best


def small_dataset(tmp_path: Path, rows: int, keep_answer: bool = True) -> Path:
    records = [json.loads(line) for line in TRAIN_DATA.read_text().splitlines()[:rows]]
    if not keep_answer:
        records = [{"instruction": r["instruction"], "output": r["output"]} for r in records]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_sweep_trains_every_rate_on_the_rest_and_scores_the_held_out_cut(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = small_dataset(tmp_path, 24)
    recipe = write_recipe(tmp_path / "r.yaml", **tiny_recipe(tmp_path, tiny_model_dir, dataset=str(data), train={"max_steps": 3}))
    out = tmp_path / "sweep"
    done = run_cli("sweep", str(recipe), "--lrs", "1e-2,1e-3", "--val", "6", "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    train = [json.loads(x) for x in (out / "data" / "train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (out / "data" / "val.jsonl").read_text().splitlines()]
    original = [json.loads(x) for x in data.read_text().splitlines()]
    assert len(val) == 6 and len(train) == 18 and sorted(map(json.dumps, train + val)) == sorted(map(json.dumps, original))
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["metric"] == "accuracy" and [p["learning_rate"] for p in summary["points"]] == [1e-3, 1e-2]
    assert summary["best"]["value"] == max(p["value"] for p in summary["points"])
    for point in summary["points"]:
        stored = json.loads((Path(point["run_dir"]) / "sweep_val.json").read_text())
        assert stored["tasks"]["choice"]["n"] == 6 and stored["tasks"]["choice"]["accuracy"] == point["value"]
        assert json.loads((Path(point["run_dir"]) / "run.json").read_text())["status"] == "complete"
    assert f"best: train.learning_rate={summary['best']['learning_rate']:g}" in done.stdout
    # a second call reuses the finished runs and scores (nothing is retrained)
    metrics = (out / "lr0.01" / "metrics.jsonl").stat().st_mtime_ns
    again = run_cli("sweep", str(recipe), "--lrs", "1e-2,1e-3", "--val", "6", "--out", str(out), "--no-progress")
    assert again.returncode == 0 and (out / "lr0.01" / "metrics.jsonl").stat().st_mtime_ns == metrics


def test_sweep_without_labels_scores_perplexity(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = small_dataset(tmp_path, 16, keep_answer=False)
    recipe = write_recipe(tmp_path / "r.yaml", **tiny_recipe(tmp_path, tiny_model_dir, dataset=str(data), train={"max_steps": 3}))
    done = run_cli("sweep", str(recipe), "--lrs", "1e-2", "--val", "4", "--out", str(tmp_path / "s"), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert summary["metric"] == "perplexity" and summary["points"][0]["value"] > 1


def test_best_takes_the_highest_accuracy_or_the_lowest_perplexity_and_the_lower_rate_on_ties() -> None:
    acc = [SweepPoint(1e-2, "b", "accuracy", 0.8), SweepPoint(1e-3, "a", "accuracy", 0.8), SweepPoint(3e-2, "c", "accuracy", 0.5)]
    assert best(acc).learning_rate == 1e-3
    ppl = [SweepPoint(1e-2, "b", "perplexity", 9.0), SweepPoint(1e-3, "a", "perplexity", 12.0)]
    assert best(ppl).learning_rate == 1e-2
