"""Experiment tracking: what ``metrics.jsonl`` holds, streamed to TensorBoard and/or Weights & Biases (``report_to``).

``metrics.jsonl`` stays the truth; a tracker gets each row as it is written (loss, lr, tokens/s, booster index
and blocks; merges and discards as events) and the resolved recipe once. Both are optional extras
(``pip install 'xgblora[tensorboard]'`` / ``'xgblora[wandb]'``); a missing package is a one-line error before
anything is written. W&B follows its own environment (``WANDB_MODE=offline``, ``WANDB_PROJECT``, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

from xgblora_cli.common.errors import UserError

SCALARS = ("loss", "lr", "tokens_per_s", "booster", "tokens")


def check_available(names: list[str]) -> None:
    """Refuse, in one line, a ``report_to`` whose package is not installed."""
    for name in names:
        if name == "none":
            continue
        module = "torch.utils.tensorboard" if name == "tensorboard" else "wandb"
        try:
            __import__(module)
            if name == "tensorboard":
                import tensorboard  # noqa: F401  (torch's writer needs the tensorboard package)
        except ImportError:
            raise UserError(f"report_to: '{name}' needs the {name} package: pip install 'xgblora[{name}]'") from None


class TensorBoard:
    """Scalars under their metrics.jsonl names, events and the recipe as text, in ``<run>/tensorboard``."""

    def __init__(self, run_dir: Path, recipe: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("recipe", f"```\n{json.dumps(recipe, indent=2)}\n```", 0)

    def log(self, row: dict) -> None:
        step = int(row["step"])
        if "event" in row:
            self.writer.add_text(f"events/{row['event']}", json.dumps(row), step)
            return
        for key in SCALARS:
            if key in row:
                self.writer.add_scalar(key, row[key], step)

    def close(self) -> None:
        self.writer.close()


class WandB:
    """One W&B run named after the run directory; rows logged at their step, events as counters and text."""

    def __init__(self, run_dir: Path, recipe: dict) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project="xgblora", name=Path(run_dir).name, dir=str(run_dir), config=recipe, reinit=True)

    def log(self, row: dict) -> None:
        step = int(row["step"])
        if "event" in row:
            self.run.log({f"events/{row['event']}": 1, f"events/{row['event']}_detail": json.dumps(row)}, step=step)
            return
        self.run.log({key: row[key] for key in (*SCALARS, "blocks") if key in row}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """The trackers a recipe asks for, fed together (nothing when ``report_to`` is ``none``)."""

    def __init__(self, names: list[str], run_dir: Path, recipe: dict) -> None:
        check_available(names)
        kinds = {"tensorboard": TensorBoard, "wandb": WandB}
        self.open = [kinds[name](run_dir, recipe) for name in names if name != "none"]

    def log(self, row: dict) -> None:
        for tracker in self.open:
            tracker.log(row)

    def close(self) -> None:
        for tracker in self.open:
            tracker.close()
