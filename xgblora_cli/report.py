"""``xgblora report``: training-loss curves as PNG, with booster boundaries and discarded boosters marked."""

from __future__ import annotations

import io
import json
from pathlib import Path

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.fsutil import atomic_write_bytes
from xgblora_cli.core.rundir import RunDir


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(step rows, event rows) of a run's ``metrics.jsonl``; a torn last line is ignored."""
    run = RunDir(run_dir)
    if not run.metrics_file.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a run directory, or it has not trained a step yet)")
    rows, events = [], []
    for line in run.metrics_file.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        (events if "event" in row else rows).append(row)
    if not rows:
        raise UserError(f"{run_dir}: metrics.jsonl holds no training steps yet")
    return rows, events


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Loss over steps, a dotted line where each booster was merged, red marks where one was discarded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, events = read_metrics(run_dir)
    figure, axis = plt.subplots(figsize=(9, 4))
    axis.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2, label="training loss")
    for before, after in zip(rows, rows[1:]):
        if after["booster"] != before["booster"]:
            axis.axvline(before["step"] + 0.5, color="grey", ls=":", lw=0.8)
    discards = [event for event in events if event["event"] == "booster_discarded"]
    for event in discards:
        axis.axvline(event["step"], color="red", lw=1.0, alpha=0.7)
    axis.set(xlabel="optimizer step", ylabel="loss", title=f"{Path(run_dir).name}: loss (dotted: booster merged"
             + (", red: booster discarded)" if discards else ")"))
    out = out or Path(run_dir) / "loss.png"
    atomic_write_bytes(out, _png(figure))
    plt.close(figure)
    return out


def plot_compare(run_dirs: list[Path], out: Path, smooth: int = 5) -> Path:
    """Several runs' loss curves (moving average over ``smooth`` steps) on one plot."""
    curves = {}
    for run_dir in run_dirs:
        rows, _ = read_metrics(run_dir)
        curves[Path(run_dir).name] = ([r["step"] for r in rows], [r["loss"] for r in rows])
    return plot_curves(curves, out, smooth)


def plot_curves(curves: dict[str, tuple[list[int], list[float]]], out: Path, smooth: int = 5) -> Path:
    """``{label: (steps, losses)}`` as moving averages over ``smooth`` steps on one plot (pure: from data alone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4))
    for label, (steps, losses) in curves.items():
        smoothed = [sum(losses[max(0, i - smooth + 1): i + 1]) / len(losses[max(0, i - smooth + 1): i + 1]) for i in range(len(losses))]
        axis.plot(steps, smoothed, lw=1.2, label=label)
    axis.set(xlabel="optimizer step", ylabel=f"loss (mean of {smooth} steps)", title="training loss by run")
    axis.legend()
    atomic_write_bytes(out, _png(figure))
    plt.close(figure)
    return out
