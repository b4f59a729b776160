"""The command line: dry runs, and bad input as one line + exit 2 with nothing written."""

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


BAD = [
    ({"rnak": 1}, [], "rnak: unknown key (did you mean 'rank'?)"),
    ({}, ["train.batch_size=two"], "train.batch_size: expected an integer, got 'two'"),
    ({}, ["layers_per_booster=9"], "layers_per_booster: must be <= the model's 4 blocks, got 9"),
    ({}, ["target_modules=[wq,wk]"], "target_modules: wq, wk match no linear layer"),
    ({"dataset": "missing.jsonl"}, [], "dataset 'missing.jsonl': file not found"),
    ({"model": "./no/such/model"}, [], "model './no/such/model': not found"),
    ({"model": "no-such-org/no-such-model"}, [], "model 'no-such-org/no-such-model': not a local folder"),
]


@pytest.mark.parametrize(("fields", "overrides", "message"), BAD, ids=[b[2][:30] for b in BAD])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path: Path, tiny_model_dir: Path, fields, overrides, message) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", **tiny_recipe(tmp_path, tiny_model_dir, **fields))
    result = run_cli("train", str(recipe), *overrides)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_recipe_and_merge_errors(tmp_path: Path) -> None:
    result = run_cli("train", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "nope.yaml: recipe file not found" in result.stderr
    result = run_cli("merge", str(tmp_path), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "not a run directory" in result.stderr
    assert not (tmp_path / "out").exists()


def test_resume_without_a_run_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", **tiny_recipe(tmp_path, tiny_model_dir))
    result = run_cli("train", str(recipe), "--resume")
    assert result.returncode == 2 and "holds no run to resume" in result.stderr


def test_full_disk_or_unwritable_output_is_refused_before_training(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    from xgblora_cli.errors import UserError
    from xgblora_cli.fsutil import check_writable

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
