"""`xgblora report`: PNG loss curves from metrics.jsonl; missing metrics are a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xgblora_cli.common.errors import UserError
from xgblora_cli.report import plot_compare, plot_run, read_metrics


def fake_run(folder: Path, offset: float) -> Path:
    folder.mkdir()
    rows = [{"step": s, "loss": 2.0 - s / 10 + offset, "booster": (s - 1) // 3} for s in range(1, 10)]
    rows.insert(4, {"step": 4, "event": "booster_discarded", "booster": 1})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    return folder


def test_one_run_and_a_comparison_become_pngs(tmp_path: Path) -> None:
    a, b = fake_run(tmp_path / "a", 0.0), fake_run(tmp_path / "b", 0.3)
    rows, events = read_metrics(a)
    assert len(rows) == 9 and len(events) == 1
    single = plot_run(a)
    assert single == a / "loss.png" and single.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    both = plot_compare([a, b], tmp_path / "cmp.png")
    assert both.read_bytes()[:4] == b"\x89PNG" and both.stat().st_size > 5000


def test_a_folder_without_metrics_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no metrics.jsonl"):
        plot_run(tmp_path)
