"""The benchmarks' record (benchmarks/records.py): scores survive a clean clone, and restoring never touches a run."""

from __future__ import annotations

import json
from pathlib import Path

import benchmarks.lib as benchlib
import benchmarks.records as bench_records


def fake_run(folder: Path, status: str = "complete", accuracy: float = 0.8) -> None:
    """A run folder as train_run and accuracy() leave it: summary, metrics, wall time, a score, weights, snapshots."""
    (folder / "snapshots" / "step50").mkdir(parents=True)
    (folder / "snapshots" / "step50" / "adapter.safetensors").write_bytes(b"\0" * 64)
    (folder / "checkpoint.safetensors").write_bytes(b"\0" * 64)
    info = {"status": status, "plan": {"rank": 1}, "trainable_per_booster": 40704}
    (folder / "run.json").write_text(json.dumps(info))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.5, "tokens": 800, "tokens_per_s": 200.0}) + "\n"
                                                  for s in range(1, 4)))
    (folder / "bench_wall_s.txt").write_text("12.0\n")
    (folder / "val_acc.json").write_text(json.dumps({"tasks": {"choice": {"accuracy": accuracy}}}))


def test_save_keeps_scores_and_metrics_of_finished_runs_only(tmp_path: Path) -> None:
    work, records = tmp_path / "runs", tmp_path / "records"
    fake_run(work / "sst2" / "xgblora_lr0.01_s0")
    fake_run(work / "sst2" / "lora_lr0.001_s0", status="running")
    (work / "sst2" / "train.jsonl").write_text('{"instruction": "x"}\n')
    (work / "tradeoff").mkdir()
    (work / "tradeoff" / "step_times.json").write_text('{"lora": [6.0]}')

    written, same = bench_records.save(work, records)

    kept = sorted(str(p.relative_to(records)) for p in records.rglob("*") if p.is_file())
    assert kept == ["sst2/xgblora_lr0.01_s0/bench_wall_s.txt", "sst2/xgblora_lr0.01_s0/metrics.jsonl",
                    "sst2/xgblora_lr0.01_s0/run.json", "sst2/xgblora_lr0.01_s0/val_acc.json",
                    "tradeoff/step_times.json"]
    assert (written, same) == (5, 0)
    assert bench_records.save(work, records) == (0, 5)  # unchanged files are not rewritten


def test_restore_rebuilds_what_report_only_reads_and_never_touches_a_run_folder_in_use(tmp_path: Path) -> None:
    work, records, fresh = tmp_path / "runs", tmp_path / "records", tmp_path / "clone_runs"
    fake_run(work / "sst2" / "xgblora_lr0.01_s0", accuracy=0.75)
    fake_run(work / "sst2" / "lora_lr0.001_s0", accuracy=0.86)
    bench_records.save(work, records)
    fake_run(fresh / "sst2" / "lora_lr0.001_s0", status="running", accuracy=0.1)  # being retrained in the clone

    assert bench_records.restore(fresh, records) == (1, 1)

    benchlib.require_runs(fresh, tmp_path / "benchmarks.md")  # a finished run is there again
    runner = benchlib.Runner(report_only=True)
    budget = benchlib.TaskBudget("sst2", train=1, val=1, steps=3, batch=8, seq=128)
    run = benchlib.train_run(runner, fresh, budget, tmp_path / "train.jsonl", "xgblora", 1e-2, 0)
    assert run["step_s"] == 4.0 and run["trainable_per_booster"] == 40704
    result = fresh / "sst2" / "xgblora_lr0.01_s0" / "val_acc.json"
    assert benchlib.accuracy(runner, "x", "choice", tmp_path / "val.jsonl", result) == 75.0
    in_use = fresh / "sst2" / "lora_lr0.001_s0"
    assert json.loads((in_use / "run.json").read_text())["status"] == "running"
    assert json.loads((in_use / "val_acc.json").read_text())["tasks"]["choice"]["accuracy"] == 0.1
    assert not (fresh / "sst2" / "xgblora_lr0.01_s0" / "checkpoint.safetensors").exists()  # scores only, no weights
