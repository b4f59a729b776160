"""The command line: dry runs, and output folders refused before training (bad input: test_errors.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, tiny_recipe, write_recipe

ROOT_DATA = ROOT / "data"


def test_dry_run_prints_recipe_and_plan_and_writes_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", **tiny_recipe(tmp_path, tiny_model_dir))
    result = run_cli("train", str(recipe), "--dry-run", "train.max_steps=9")
    assert result.returncode == 0, result.stderr
    assert "max_steps: 9" in result.stdout
    assert "boosters=3 trainable_per_booster=2048" in result.stdout  # the preset's rank 2
    assert not (tmp_path / "run").exists()


def test_lora_preset_is_one_booster_over_all_blocks(tmp_path: Path, tiny_model_dir: Path) -> None:
    fields = tiny_recipe(tmp_path, tiny_model_dir)
    del fields["layers_per_booster"], fields["steps_per_booster"]
    recipe = write_recipe(tmp_path / "r.yaml", **fields)
    result = run_cli("train", str(recipe), "--dry-run", "method=lora")
    assert "boosters=1 trainable_per_booster=16384" in result.stdout, result.stderr  # rank 8 x 4 blocks x 512


def test_full_disk_or_unwritable_output_is_refused_before_training(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    from xgblora_cli.common.errors import UserError
    from xgblora_cli.common.fsutil import check_writable

    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9, 5 * 2**20))
    with pytest.raises(UserError, match=r"output_dir: 5 MiB free on the disk of .*, about 16 MiB needed"):
        check_writable(tmp_path / "new" / "run", 16 * 2**20, "output_dir")
    monkeypatch.undo()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(UserError, match="output_dir: cannot write to .*locked"):
        check_writable(locked / "run", 1, "output_dir")


def test_a_run_started_with_relative_paths_works_from_another_directory(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Relative paths in a recipe are stored absolute in the run, so `xgblora eval RUN` (which reads the stored
    eval block) and `--resume` work from anywhere; they used to be stored as written and fail elsewhere."""
    import shutil

    from tests.conftest import ROOT, TRAIN_DATA

    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(TRAIN_DATA, work / "train.jsonl")
    shutil.copyfile(ROOT / "data" / "sst2_dev.tsv", work / "dev.tsv")
    fields = tiny_recipe(tmp_path, tiny_model_dir, dataset="train.jsonl", output_dir="run",
                         eval={"tasks": ["sst2"], "data": "dev.tsv", "limit": 4}, train={"max_steps": 2}, steps_per_booster=2)
    write_recipe(work / "r.yaml", **fields)
    assert run_cli("train", "r.yaml", "--no-progress", cwd=work).returncode == 0
    stored = (work / "run" / "recipe.yaml").read_text()
    assert f"dataset: {work / 'train.jsonl'}" in stored and f"output_dir: {work / 'run'}" in stored
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli("eval", str(work / "run"), cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    resumed = run_cli("train", str(work / "r.yaml"), "--resume", f"output_dir={work / 'run'}", "--no-progress", cwd=elsewhere)
    assert resumed.returncode == 0 and "already complete" in resumed.stdout, resumed.stderr


def test_through_a_pipe_nothing_is_wrapped_and_printed_commands_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Off a terminal (CI logs, | tee) no line is cut at 80 columns: the closing hint of train is one line and runs
    as printed; plan's title and eval's table rows are whole; merge names its folder whole."""
    import shlex

    deep = tmp_path / "a_folder_with_a_long_name_so_that_every_path_is_wider_than_eighty_columns"
    deep.mkdir()
    recipe = write_recipe(deep / "recipe_with_a_long_name.yaml",
                          **tiny_recipe(deep, tiny_model_dir, train={"max_steps": 2}, steps_per_booster=2))
    trained = run_cli("train", str(recipe), "--no-progress")
    assert trained.returncode == 0, trained.stderr
    hint = next(line for line in trained.stderr.splitlines() if line.startswith("done: "))
    command = shlex.split(hint.split("merge with: ", 1)[1].rstrip(")"))
    assert command[:2] == ["xgblora", "merge"] and len(hint) > 80
    merged = run_cli(*command[1:])
    assert merged.returncode == 0, merged.stderr
    assert str(deep / "run" / "merged") in merged.stderr
    plan = run_cli("plan", str(recipe))
    title = next(line for line in plan.stdout.splitlines() if "memory plan of" in line)
    assert str(recipe) in title and "on cpu" in title
    scored = run_cli("eval", str(deep / "run"), "--task", "choice", "--data", str(ROOT_DATA / "arc_easy_test_200.jsonl"), "--limit", "4")
    assert scored.returncode == 0, scored.stderr
    import re

    row = next(line for line in scored.stdout.splitlines() if line.lstrip("│┃ ").startswith("choice"))
    assert re.search(r"choice\s+│\s+\d+\.\d\d\s+│\s+4\s+│", row), row  # task, score and n on one line


def test_version_and_plain_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("xgblora ") and "torch" in version.stdout and "device" in version.stdout
    help_text = run_cli("train", "--help").stdout
    assert "RECIPE [KEY=VALUE]..." in help_text and "<bool>" not in help_text and "{RECIPE}" not in help_text
    assert "--max-new-tokens" in run_cli("chat", "--help").stdout
