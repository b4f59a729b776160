"""The training progress display: a rich bar with loss, lr, booster t/T, tokens/s and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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

    def __enter__(self) -> "TrainProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, loss: float, lr: float, booster: int, boosters: int, tokens_per_s: float) -> None:
        stats = f"loss {loss:.4f}  lr {lr:.2e}  booster {booster + 1}/{boosters}  {tokens_per_s:,.0f} tok/s"
        self.progress.update(self.task, completed=step, stats=stats)

    def note(self, message: str) -> None:
        self.progress.console.print(message)
