"""report_to: TensorBoard's event file and W&B's offline run hold what metrics.jsonl holds; a missing package or an
unknown tracker is a one-line error before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli, tiny_recipe, write_recipe
from xgblora_cli.common.errors import UserError
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import start_run
from xgblora_cli.tracking import check_available


def metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r], [r for r in rows if "event" in r]


def test_tensorboard_event_file_holds_the_metrics(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fields = tiny_recipe(tmp_path, tiny_model_dir, report_to=["tensorboard"])
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    steps, events = metrics(run_dir)
    assert [e["event"] for e in events] == ["booster_merged"] * 3 and [e["step"] for e in events] == [3, 6, 8]
    board = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    loss = board.Scalars("loss")
    assert [s.step for s in loss] == [r["step"] for r in steps]
    assert [s.value for s in loss] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
    assert {"lr", "tokens_per_s", "booster"} <= set(board.Tags()["scalars"])
    assert "events/booster_merged/text_summary" in board.Tags()["tensors"] and "recipe/text_summary" in board.Tags()["tensors"]


def test_wandb_offline_run_holds_the_metrics(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", **tiny_recipe(tmp_path, tiny_model_dir, report_to="wandb"))
    result = run_cli("train", str(recipe), "--no-progress", env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert result.returncode == 0, result.stderr[-2000:]
    steps, _ = metrics(tmp_path / "run")
    offline = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1
    # the run file is a log of protobuf records (keys and JSON values as plain strings): read them back as bytes
    data = offline[0].read_bytes()
    for text in ("loss", "tokens_per_s", "events/booster_merged", "max_steps", str(tiny_model_dir)):
        assert text.encode() in data, text
    for row in steps:
        assert json.dumps(row["loss"]).encode() in data, row


def test_bad_trackers_are_refused_before_anything_is_written(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    with pytest.raises(UserError, match="report_to: must be none, tensorboard, wandb or a list of them, got 'mlflow'"):
        recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, report_to=["mlflow"]), "r.yaml")
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(UserError, match=r"report_to: 'wandb' needs the wandb package: pip install 'xgblora\[wandb\]'"):
        check_available(["none", "wandb"])
    with pytest.raises(UserError, match="needs the wandb package"):
        start_run(recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, report_to=["wandb"]), "r.yaml"), "r.yaml", progress=False)
    assert not (tmp_path / "run").exists()
