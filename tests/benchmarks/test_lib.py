"""What the quality benchmarks share (benchmarks/lib.py): reading back nothing never blanks a table; the CPU's bf16 flags."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.lib as benchlib


def test_require_runs_stops_on_a_work_folder_without_a_finished_run_and_names_the_doc(tmp_path: Path) -> None:
    work, doc = tmp_path / "runs", tmp_path / "benchmarks.md"
    (work / "sst2" / "lora_lr0.001_s0").mkdir(parents=True)  # started, not finished: no bench_wall_s.txt
    with pytest.raises(SystemExit, match=f"no finished run in {work}.*{doc} is left as it is"):
        benchlib.require_runs(work, doc)
    (work / "sst2" / "lora_lr0.001_s0" / "bench_wall_s.txt").write_text("61.0\n")
    benchlib.require_runs(work, doc)  # one finished run: the table can be read back


def test_cpu_bf16_flags_reads_the_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert benchlib.cpu_bf16_flags(cpuinfo) == ["avx512_bf16"]
    cpuinfo.write_text("flags\t\t: fpu avx2\n")
    assert benchlib.cpu_bf16_flags(cpuinfo) == []
    assert benchlib.cpu_bf16_flags(tmp_path / "missing") == []


def test_ratio_rounds_repeat_until_the_spread_is_known() -> None:
    steady = benchlib.ratio_rounds(lambda r: 2.0 + 0.01 * (r % 2), min_rounds=5, max_rounds=15)
    assert steady.rounds == 5 and 2.0 <= steady.median <= 2.01 and (steady.low, steady.high) == (2.0, 2.01)
    noisy_values = [1.0, 3.0, 0.9, 2.5, 1.1, 2.8, 1.0, 2.9, 1.2, 3.1, 0.8, 2.7]
    noisy = benchlib.ratio_rounds(lambda r: noisy_values[r], min_rounds=5, max_rounds=12)
    assert noisy.rounds == 12 and noisy.low == 0.8 and noisy.high == 3.1
    assert "range 0.80-3.10 over 12 rounds" in noisy.text()


class FakeRunner:
    """Records the CLI calls; ``train`` writes what a finished (or, with ``stop``, a killed) run leaves behind."""

    def __init__(self, stop: bool = False) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.stop = stop

    def cli(self, *args: str) -> None:
        import yaml

        self.calls.append(args)
        recipe = yaml.safe_load(Path(args[1]).read_text())
        out = Path(recipe["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(yaml.safe_dump(recipe))
        (out / "checkpoint.safetensors").write_bytes(b"")
        (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0, "tokens": 10, "tokens_per_s": 5.0}\n')
        status = "running" if self.stop else "complete"
        (out / "run.json").write_text(f'{{"status": "{status}", "plan": {{}}, "trainable_per_booster": 1}}')
        if self.stop:
            raise RuntimeError("killed")


def test_train_run_holds_fixed_keys_out_of_the_name_and_resumes_a_killed_run(tmp_path: Path) -> None:
    import yaml

    budget = benchlib.TaskBudget("sst2", train=10, val=5, steps=20, batch=2, seq=64)
    killed = FakeRunner(stop=True)
    with pytest.raises(RuntimeError):
        benchlib.train_run(killed, tmp_path, budget, tmp_path / "d.jsonl", "xgblora", 3e-3, 0, {"shrinkage": 0.5},
                           fixed={"booster_init": "random", "shrinkage": 1.0})
    assert killed.calls[0][-1] == "--overwrite"
    runner = FakeRunner()
    run = benchlib.train_run(runner, tmp_path, budget, tmp_path / "d.jsonl", "xgblora", 3e-3, 0, {"shrinkage": 0.5},
                             fixed={"booster_init": "random", "shrinkage": 1.0})
    assert runner.calls[0][-1] == "--resume"  # the killed run goes on from its checkpoint
    assert run["dir"].name == "xgblora_lr0.003_s0_shrinkage0.5"  # fixed keys are not part of the name
    recipe = yaml.safe_load((run["dir"] / "recipe.yaml").read_text())
    assert recipe["booster_init"] == "random" and recipe["shrinkage"] == 0.5  # extra wins over fixed
    again = FakeRunner()
    benchlib.train_run(again, tmp_path, budget, tmp_path / "d.jsonl", "xgblora", 3e-3, 0, {"shrinkage": 0.5})
    assert again.calls == []  # a finished run is reused


def test_spread_known_needs_enough_rounds_and_tight_quartiles() -> None:
    assert not benchlib.spread_known([1.0, 1.0], min_rounds=3)
    assert benchlib.spread_known([1.0, 1.01, 0.99], min_rounds=3)
    assert not benchlib.spread_known([1.0, 1.5, 0.6, 1.2], min_rounds=3)
    assert benchlib.as_ratio([3.0]).median == 3.0 and benchlib.as_ratio([1.0, 3.0, 2.0]).low == 1.0


def test_interleaved_alternates_which_side_goes_first_and_timed_measures_one_call() -> None:
    assert benchlib.interleaved(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert benchlib.interleaved(["a", "b", "c"], 1) == ["c", "b", "a"]
    calls: list[int] = []
    seconds = benchlib.timed(lambda: calls.append(1) or sum(range(100_000)))
    assert calls == [1] and seconds > 0


def test_the_control_keeps_one_booster_for_the_run_whatever_kappa_the_baseline_fixes(tmp_path: Path) -> None:
    import yaml

    budget = benchlib.TaskBudget("sst2", train=10, val=5, steps=20, batch=2, seq=64)
    fixed = {**benchlib.OLD_KEYS["xgblora"], "steps_per_booster": 10}
    run = benchlib.train_run(FakeRunner(), tmp_path, budget, tmp_path / "d.jsonl", "control", 1e-2, 0, fixed=fixed)
    recipe = yaml.safe_load((run["dir"] / "recipe.yaml").read_text())
    assert recipe["method"] == "xgblora" and recipe["steps_per_booster"] == 20 and recipe["rank"] == 1
    plain = benchlib.train_run(FakeRunner(), tmp_path, budget, tmp_path / "d.jsonl", "xgblora", 1e-2, 0, fixed=fixed)
    assert yaml.safe_load((plain["dir"] / "recipe.yaml").read_text())["steps_per_booster"] == 10
