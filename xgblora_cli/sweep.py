"""``xgblora sweep``: choose a recipe's learning rate on validation records cut from its own training data.

The recipe's dataset (a local file or a hub split) is shuffled with the recipe's seed and split once into
``OUT/data/train.jsonl`` and ``OUT/data/val.jsonl`` (``val`` records held out, never trained on). The recipe is
then trained at every rate into ``OUT/lr<rate>/`` and each run is scored on the held-out records: accuracy
(``--task choice``, label scoring) when every held-out record is a labelled choice or classification record,
else perplexity of the held-out records (lower is better). Finished runs and scores are reused, a run
interrupted after a checkpoint is resumed, and ``OUT/sweep.json`` is rewritten after every rate, so a sweep
continues where it stopped. Nothing here looks at a test split: that stays the user's, for the chosen rate.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.fsutil import atomic_write_text
from xgblora_cli.common.outputs import check_replace
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.data.formats import read_rows, rename
from xgblora_cli.recipe import Recipe
from xgblora_cli.recipe_file import load_recipe


@dataclass(frozen=True)
class SweepPoint:
    """One rate's run and its validation score."""

    learning_rate: float
    run_dir: str
    metric: str
    """``accuracy`` (higher is better, 0..1) or ``perplexity`` (lower is better)."""
    value: float


def split_dataset(recipe: Recipe, val_count: int, folder: Path) -> tuple[Path, Path]:
    """The recipe's rows shuffled with its seed: all but ``val_count`` into ``folder/train.jsonl`` (raw rows, so
    the recipe's ``dataset_columns`` still apply), ``val_count`` into ``folder/val.jsonl`` (columns renamed, as
    ``xgblora eval`` reads them). Returns (train, val)."""
    rows = read_rows(recipe.dataset, recipe.dataset_split)
    if not 1 <= val_count <= len(rows) // 2:
        raise UserError(f"--val: must be 1..{len(rows) // 2} (at most half of dataset '{recipe.dataset}', {len(rows)} records), "
                        f"got {val_count}")
    order = random.Random(recipe.seed).sample(range(len(rows)), len(rows))
    held = set(order[:val_count])
    train = [row for i, row in enumerate(rows) if i not in held]
    val = [rename(rows[i], recipe.dataset_columns) for i in sorted(held)]
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.jsonl", folder / "val.jsonl"
    for path, part in zip(paths, (train, val)):
        atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in part))
    return paths


def metric_for(val: Path) -> str:
    """``accuracy`` when every held-out record is a labelled choice/classification record, else ``perplexity``."""
    from xgblora_cli.evaluation.tasks.choice import load

    try:
        loaded = load(val)
    except UserError:
        return "perplexity"
    return "accuracy" if loaded.questions and not loaded.skipped else "perplexity"


def train_at(recipe_path: Path, overrides: list[str], lr: float, train: Path, run_dir: Path, progress: bool) -> None:
    """Train the recipe at ``lr`` on ``train`` into ``run_dir``: skipped when complete, resumed from a checkpoint."""
    from xgblora_cli.runner import start_run

    recipe = load_recipe(recipe_path, [*overrides, f"dataset={train}", f"output_dir={run_dir}", f"train.learning_rate={lr}"])
    run = RunDir(run_dir)
    resumable = run.is_run() and run.load_checkpoint() is not None
    if run.is_run() and run.info().get("status") == "complete":
        return
    start_run(recipe, str(recipe_path), resume=resumable, overwrite=not resumable, progress=progress)


def score(run_dir: Path, val: Path, metric: str) -> float:
    """The run's validation ``metric`` on ``val``, computed once into ``run_dir/sweep_val.json``."""
    from xgblora_cli.evaluation.evaluate import eval_settings, evaluate

    cached = run_dir / "sweep_val.json"
    if not cached.is_file():
        task = "choice" if metric == "accuracy" else "perplexity"
        settings = eval_settings(str(run_dir), {"tasks": [task], "data": str(val), "scoring": "label"})
        atomic_write_text(cached, json.dumps(evaluate(str(run_dir), settings), indent=2) + "\n")
    result = json.loads(cached.read_text())["tasks"]
    return result["choice"]["accuracy"] if metric == "accuracy" else result["perplexity"]["perplexity"]


def best(points: list[SweepPoint]) -> SweepPoint:
    """The best point (ties: the lower rate, the first in rate order)."""
    ordered = sorted(points, key=lambda p: p.learning_rate)
    if ordered[0].metric == "accuracy":
        return max(ordered, key=lambda p: p.value)
    return min(ordered, key=lambda p: p.value)


def is_sweep(out: Path) -> bool:
    """Whether ``out`` is a sweep's folder (its held-out split, or its table)."""
    return (out / "sweep.json").is_file() or (out / "data" / "val.jsonl").is_file()


def sweep(recipe_path: Path, overrides: list[str], rates: list[float], val_count: int, out: Path,
          progress: bool = True, force: bool = False) -> list[SweepPoint]:
    """Train the recipe at each of ``rates`` on its data less ``val_count`` held-out records and score each run
    on them; returns every rate's point (also in ``out/sweep.json``). An existing sweep folder is continued
    (finished rates are reused), or with ``force`` started afresh; a folder that is no sweep is refused."""
    if not rates or any(r <= 0 for r in rates):
        raise UserError(f"--lrs: give one or more positive learning rates, got {rates}")
    recipe = load_recipe(recipe_path, overrides)
    if out.is_dir() and any(out.iterdir()) and not is_sweep(out):
        raise UserError(f"--out {out}: this folder holds no xgblora sweep; choose another --out (a sweep's folder is "
                        "reused: its finished rates count)")
    if force and check_replace(out, force, is_sweep, "--out", "xgblora sweep"):
        shutil.rmtree(out)
    train, val = split_dataset(recipe, val_count, out / "data")
    metric = metric_for(val)
    points: list[SweepPoint] = []
    for lr in sorted(set(rates)):
        run_dir = out / f"lr{lr:g}"
        train_at(recipe_path, overrides, lr, train, run_dir, progress)
        points.append(SweepPoint(lr, str(run_dir), metric, score(run_dir, val, metric)))
        atomic_write_text(out / "sweep.json", json.dumps({"recipe": str(recipe_path), "overrides": overrides,
                                                          "val_records": val_count, "metric": metric,
                                                          "points": [asdict(p) for p in points],
                                                          "best": asdict(best(points))}, indent=2) + "\n")
    return points
