"""The post-hoc tail average is the record a run trained with ``average_last`` holds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks.tail_average import averaged_copy
from tests.conftest import tiny_recipe
from xgblora_cli.core.record import Record
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import start_run


def test_a_copy_with_the_average_appended_equals_a_run_trained_with_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    plain = start_run(recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "a")), "r.yaml"),
                      "r.yaml", progress=False)
    trained = start_run(recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "b"), average_last=3),
                                         "r.yaml"), "r.yaml", progress=False)
    before = (plain / "boosters" / "index.jsonl").read_text()
    copy = averaged_copy(plain, 3, tmp_path / "c")
    assert (plain / "boosters" / "index.jsonl").read_text() == before  # the run itself untouched
    got, want = Record(copy).load(), Record(trained).load()
    assert len(got) == len(want) == 4 and Record(copy).end_steps() == Record(trained).end_steps()
    assert got[3].blocks == want[3].blocks
    for name, (u, v) in want[3].factors.items():
        assert torch.equal(got[3].factors[name][0], u) and torch.equal(got[3].factors[name][1], v)
    with pytest.raises(SystemExit, match="--last must be in 2..3"):
        averaged_copy(plain, 4, tmp_path / "d")
