"""The quality benchmark's data cut (benchmarks/lib.py): class-balanced, validation never overlaps training, the
same draw every time, and SST-2's cut is the slice shipped in data/."""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path

import pytest

import benchmarks.lib as benchlib
from tests.conftest import ROOT


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
    train, val = benchlib.cut_glue(glue, importlib.import_module("benchmarks.quality").BUDGETS["sst2"])
    for name, rows in (("sst2_train_2000.jsonl", train), ("sst2_val_400.jsonl", val)):
        expected = "".join(json.dumps(benchlib.to_record("sst2", row)) + "\n" for row in rows)
        assert (ROOT / "data" / name).read_text() == expected


def test_a_missing_glue_folder_is_one_line_naming_glue(tmp_path: Path) -> None:
    budget = benchlib.TaskBudget("rte", train=20, val=5, steps=10, batch=2, seq=64)
    with pytest.raises(SystemExit, match=r"RTE/train.tsv: not found.*--glue"):
        benchlib.cut_glue(tmp_path / "nowhere", budget)


def test_collect_never_writes_an_unfinished_record(tmp_path: Path, monkeypatch) -> None:
    """--collect from runs that do not cover the tables (a partial work folder) leaves the record and the doc alone."""
    import benchmarks.quality as bench_quality
    monkeypatch.setitem(bench_quality.BUDGETS, "rte", benchlib.TaskBudget("rte", train=20, val=5, steps=10, batch=2, seq=64))
    glue, work, doc = _fake_rte(tmp_path / "glue"), tmp_path / "work", tmp_path / "benchmarks.md"
    doc.write_text(f"# B\n\n{bench_quality.START}\nthe measured tables\n{bench_quality.END}\n")
    finished = work / "rte" / "lora_lr0.001_s0"
    finished.mkdir(parents=True)
    (finished / "bench_wall_s.txt").write_text("1")
    results = tmp_path / "quality.json"
    monkeypatch.setattr("sys.argv", ["quality", "--collect", "--tasks", "rte", "--glue", str(glue),
                                     "--work", str(work), "--doc", str(doc), "--results", str(results)])
    with pytest.raises(SystemExit, match=r"not finished in .*: rte base .* is left as it is"):
        bench_quality.main()
    assert "the measured tables" in doc.read_text() and not results.exists()


def test_the_tables_render_from_the_results_file_alone(tmp_path: Path) -> None:
    """The shipped results file renders exactly the section docs/benchmarks.md holds (no run folder needed)."""
    import json

    from benchmarks import quality_report

    results = json.loads((ROOT / "benchmarks" / "results" / "quality.json").read_text())
    shipped = (ROOT / "docs" / "benchmarks.md").read_text()
    section = shipped.split("<!-- bench_quality:start -->\n")[1].split("\n<!-- bench_quality:end -->")[0]
    assert quality_report.render(results) == section
    lora = results["tasks"]["sst2"]["methods"]["lora"]
    assert [s["seed"] for s in lora["seeds"]] == [0, 1, 2] and all(50 < s["test"] <= 100 for s in lora["seeds"])


class _FakeBench:
    """What prefetch() asks of a TaskBench, recording the calls instead of training or scoring."""

    def __init__(self, name: str, seq: int, grids: dict[str, list[float]], calls: list) -> None:
        self.budget = benchlib.TaskBudget(name, train=1, val=1, steps=10, batch=1, seq=seq)
        self.grids, self.calls = grids, calls

    def base_scores(self) -> tuple[float, float]:
        self.calls.append((self.budget.name, "base"))
        return 50.0, 50.0

    def run(self, method: str, lr: float, seed: int) -> dict:
        self.calls.append((self.budget.name, "run", method, lr, seed))
        return {"dir": Path(f"/runs/{method}_{lr:g}_{seed}")}

    def val_acc(self, target: str, folder: Path) -> float:
        return {0.01: 70.0, 0.003: 80.0}.get(float(folder.name.split("_")[1]), 60.0)

    def grid_point(self, method: str, lr: float, seed: int) -> float:
        return importlib.import_module("benchmarks.quality").TaskBench.grid_point(self, method, lr, seed)

    def choose(self, method: str, grid: list[float]) -> tuple[float, dict[float, float]]:
        return importlib.import_module("benchmarks.quality").TaskBench.choose(self, method, grid)

    @property
    def args(self):  # choose() reads the seeds
        return type("Args", (), {"seeds": [0, 1]})()

    def finish(self, method: str, lr: float, seed: int) -> None:
        self.calls.append((self.budget.name, "finish", method, lr, seed))


def test_defaults_are_the_shipped_rates_and_a_one_rate_grid_trains_nothing_to_choose() -> None:
    import benchmarks.quality as bench_quality
    from xgblora_cli.recipe import PRESETS

    chosen = bench_quality.grids("rte", ["rte:lora=3e-3"], bench_quality.DEFAULT_RATES)
    assert chosen["xgblora"] == [PRESETS["xgblora"].learning_rate] and chosen["cola"] == [PRESETS["cola"].learning_rate]
    assert chosen["lora"] == [3e-3]
    calls: list = []
    bench = _FakeBench("rte", 256, chosen, calls)
    assert bench_quality.rate_of(bench, "xgblora", {}) == (PRESETS["xgblora"].learning_rate, {}, "the preset's default")
    assert bench_quality.rate_of(bench, "lora", {}) == (3e-3, {}, "given by --lrs")
    assert bench_quality.rate_of(bench, "control", {"xgblora": 0.01}) == (0.01, {}, "xgblora's")
    assert calls == []  # nothing trained to choose a rate given outright


def test_prefetch_runs_the_grids_first_then_every_seed_at_the_chosen_rate_longest_task_first() -> None:
    import benchmarks.quality as bench_quality
    calls: list = []
    sst2 = _FakeBench("sst2", 128, {"xgblora": [0.003, 0.01], "lora": [0.001]}, calls)
    rte = _FakeBench("rte", 256, {"xgblora": [0.01], "lora": [0.001]}, calls)
    bench_quality.prefetch([sst2, rte], ["xgblora", "lora", "control"], [0, 1], workers=1)
    finished = [call for call in calls if call[1] == "finish"]
    assert finished == [("rte", "finish", "lora", 0.001, 0), ("rte", "finish", "xgblora", 0.01, 0), ("rte", "finish", "control", 0.01, 0),
                        ("rte", "finish", "lora", 0.001, 1), ("rte", "finish", "xgblora", 0.01, 1), ("rte", "finish", "control", 0.01, 1),
                        ("sst2", "finish", "lora", 0.001, 0), ("sst2", "finish", "xgblora", 0.003, 0), ("sst2", "finish", "control", 0.003, 0),
                        ("sst2", "finish", "lora", 0.001, 1), ("sst2", "finish", "xgblora", 0.003, 1), ("sst2", "finish", "control", 0.003, 1)]
    grid_runs = {call[2:] for call in calls[: calls.index(finished[0])] if call[1] == "run"}
    assert grid_runs == {("xgblora", 0.003, 0), ("xgblora", 0.01, 0)}  # only a grid of 2+ rates is trained to choose
    assert calls.index(("rte", "base")) < calls.index(finished[0]) and ("sst2", "base") in calls


def test_side_by_side_jobs_run_at_once_and_a_failure_is_raised() -> None:
    import threading

    meet = threading.Barrier(2, timeout=10)  # passes only if both jobs run at the same time
    benchlib.run_side_by_side([meet.wait, meet.wait], workers=2)

    def fails() -> None:
        raise RuntimeError("run failed")

    with pytest.raises(RuntimeError, match="run failed"):
        benchlib.run_side_by_side([fails, lambda: None], workers=2)


def test_run_cost_is_each_methods_mean_step_time_over_loras_and_auto_dtype_follows_the_cpu(monkeypatch) -> None:
    import benchmarks.quality as bench_quality
    rows = {"lora": {"seeds": [{"step_s": 2.0}, {"step_s": 4.0}]}, "xgblora": {"seeds": [{"step_s": 1.5}, {"step_s": 2.1}]}}
    assert bench_quality.run_cost(rows) == pytest.approx({"lora": 1.0, "xgblora": 0.6})
    assert bench_quality.run_cost({"xgblora": rows["xgblora"]}) == {}
    monkeypatch.setattr(benchlib, "cpu_bf16_flags", lambda: ["amx_bf16"])
    assert benchlib.chosen_dtype("auto") == "bfloat16" and benchlib.chosen_dtype("float32") == "float32"
    monkeypatch.setattr(benchlib, "cpu_bf16_flags", lambda: [])
    assert benchlib.chosen_dtype("auto") == "float32"


def test_runner_gives_each_command_its_thread_count(monkeypatch) -> None:
    seen: list = []
    monkeypatch.setattr(benchlib.subprocess, "run", lambda *a, **kw: seen.append(kw.get("env")))
    benchlib.Runner(threads=1).cli("eval", "--help")
    benchlib.Runner().cli("eval", "--help")
    assert seen[0]["OMP_NUM_THREADS"] == "1" and seen[1] is None


def test_the_grid_protocol_writes_its_own_tables_and_plots_never_the_shipped_rate_ones() -> None:
    import benchmarks.quality as bench_quality
    name, start, end = bench_quality.outputs("defaults")
    assert (name, start, end) == ("bench_quality", bench_quality.START, bench_quality.END)
    grid_name, grid_start, _ = bench_quality.outputs("grid")
    assert grid_name != name and grid_start != start
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    assert doc.count(start) == 1 and doc.count(grid_start) == 1  # both sections exist, once each
