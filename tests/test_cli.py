"""The command line: dry runs, and output folders refused before training (bad input: test_errors.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_recipe, write_recipe


def test_dry_run_prints_recipe_and_plan_and_writes_nothing(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", **tiny_recipe(tmp_path, tiny_model_dir))
    result = run_cli("train", str(recipe), "--dry-run", "train.max_steps=9")
    assert result.returncode == 0, result.stderr
    assert "max_steps: 9" in result.stdout
    assert "boosters=3 trainable_per_booster=1024" in result.stdout
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
