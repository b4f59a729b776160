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
