"""The training progress display: a rich bar with loss, lr, booster t/T, tokens/s and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    """``with TrainProgress(total, start) as bar: bar.update(step, loss=..., ...)``."""

    def __init__(self, total: int, start: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, stats="starting")
        # Off a terminal (nohup, CI logs) a bar is not redrawn: print about 20 plain lines instead.
        self.plain = not self.console.is_terminal
        self.every = max(1, total // 20)
        self.total = total

    def __enter__(self) -> "TrainProgress":
        if not self.plain:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.plain:
            self.progress.stop()

    def note(self, message: str) -> None:
        """A line above the bar (or in the log, off a terminal)."""
        self.console.print(message, highlight=False)

    def update(self, step: int, loss: float, lr: float, booster: int, boosters: int, tokens_per_s: float) -> None:
        stats = f"loss {loss:.4f}  lr {lr:.2e}  booster {booster + 1}/{boosters}  {tokens_per_s:,.0f} tok/s"
        self.progress.update(self.task, completed=step, stats=stats)
        if self.plain and (step % self.every == 0 or step == self.total):
            task = self.progress.tasks[0]
            eta = task.time_remaining
            eta_text = f"  ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else ""
            self.console.print(f"step {step}/{self.total}  {stats}{eta_text}", highlight=False)



class NoProgress:
    """The display off the main rank or with ``--no-progress``: no bar, notes as plain lines."""

    def __enter__(self) -> "NoProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *args: object) -> None:
        return None

    def note(self, message: str) -> None:
        print(message, flush=True)
