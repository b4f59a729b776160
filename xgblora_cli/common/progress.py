"""Progress displays: a rich bar with ETA (training: loss, lr, booster t/T, tokens/s; generation: answers)."""

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


class Bar:
    """``with Bar("train", total, start) as bar: bar.advance(done, "stats")``: a rich bar with ETA on a terminal;
    off one (nohup, CI logs, a pipe) about 20 plain lines instead, since a bar is not redrawn there."""

    def __init__(self, label: str, total: int, start: int = 0, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn(f"[bold]{label}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task(label, total=total, completed=start, stats="starting")
        self.plain = not self.console.is_terminal
        self.every = max(1, total // 20)
        self.total = total
        self.label = label

    def __enter__(self) -> "Bar":
        if not self.plain:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.plain:
            self.progress.stop()

    def note(self, message: str) -> None:
        """A line above the bar (or in the log, off a terminal)."""
        self.console.print(message, highlight=False)

    def advance(self, done: int, stats: str) -> None:
        """``done`` of ``total`` finished, with a line of ``stats``."""
        previous = int(self.progress.tasks[0].completed)
        self.progress.update(self.task, completed=done, stats=stats)
        if self.plain and (done // self.every > previous // self.every or done == self.total):
            eta = self.progress.tasks[0].time_remaining
            eta_text = f"  ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else ""
            unit = "step" if self.label == "train" else self.label
            self.console.print(f"{unit} {done}/{self.total}  {stats}{eta_text}", highlight=False)


class TrainProgress(Bar):
    """``with TrainProgress(total, start) as bar: bar.update(step, loss=..., ...)``."""

    def __init__(self, total: int, start: int, console: Console | None = None) -> None:
        super().__init__("train", total, start, console)

    def update(self, step: int, loss: float, lr: float, booster: int, boosters: int, tokens_per_s: float) -> None:
        self.advance(step, f"loss {loss:.4f}  lr {lr:.2e}  booster {booster + 1}/{boosters}  {tokens_per_s:,.0f} tok/s")


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
