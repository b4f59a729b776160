"""Each preset's default learning rate by the rule of docs/benchmarks.md "Defaults": validation accuracy over both
tasks of the quality benchmark together (SST-2 and RTE), the rate with the best worst-case relative accuracy.

For every method and every rate of its grid that has a seed-0 validation score on a task (``val_acc.json`` of the
run ``runs/bench_quality/<task>/<method>_lr<rate>_s0``, written by benchmarks/quality.py), the relative accuracy
on that task is the rate's validation accuracy over the best rate's; a rate's worst-case relative accuracy is the
smaller over the tasks, and only rates scored on every task have one. The rule picks the highest (ties: the lower
rate) and the table sets it beside the preset's shipped default (``xgblora_cli/recipe.py``). Nothing is trained or
scored here and no test number enters.

    .venv/bin/python -m benchmarks defaults [--work runs/bench_quality] [--doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchmarks.lib import (
    ROOT,
    block,
    recorded_accuracy,
    require_runs,
    row_cells,
    write_doc,
)
from xgblora_cli.recipe import PRESETS

START, END = "<!-- bench_defaults:start -->", "<!-- bench_defaults:end -->"
TASKS = ["sst2", "rte"]
METHODS = ["xgblora", "cola", "lora"]
LABELS = {"sst2": "SST-2", "rte": "RTE"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_quality")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    return p.parse_args()


def grid_scores(work: Path, task: str, method: str) -> dict[float, float]:
    """Validation accuracy (%) by learning rate of ``method``'s seed-0 runs on ``task`` (the plain preset: runs
    with extra recipe keys, named with a suffix, are not matched)."""
    pattern = re.compile(rf"^{method}_lr([0-9.e+-]+)_s0$")
    scores = {}
    for result in sorted((work / task).glob(f"{method}_lr*_s0/val_acc.json")):
        match = pattern.match(result.parent.name)
        if match:
            scores[float(match.group(1))] = recorded_accuracy(result)
    return scores


def worst_relative(by_task: dict[str, dict[float, float]]) -> dict[float, float]:
    """Per rate scored on every task of ``by_task`` ({task: {rate: accuracy}}): the smallest, over the tasks, of
    its accuracy over that task's best accuracy."""
    if not by_task or any(not scores for scores in by_task.values()):
        return {}
    common = set.intersection(*(set(scores) for scores in by_task.values()))
    return {lr: min(scores[lr] / max(scores.values()) for scores in by_task.values()) for lr in sorted(common)}


def pick(worst: dict[float, float]) -> float | None:
    """The rate with the highest worst-case relative accuracy; ties go to the lower rate (None: no rate)."""
    return max(sorted(worst), key=lambda lr: worst[lr]) if worst else None


def table(work: Path) -> str:
    """The rule's table: every method's rates with their validation accuracy per task, worst-case relative
    accuracy, the rule's pick and the shipped default."""
    lines = ["| method | rate | " + " | ".join(f"{LABELS[t]} val. (seed 0)" for t in TASKS) + " | worst relative | |",
             "|---|---|" + "---|" * len(TASKS) + "---|---|"]
    picks = []
    for method in METHODS:
        by_task = {task: grid_scores(work, task, method) for task in TASKS}
        worst = worst_relative(by_task)
        chosen, default = pick(worst), PRESETS[method].learning_rate
        picks.append(f"{method} {chosen:g} (of {len(worst)} rate{'s' * (len(worst) != 1)} scored on both)"
                     if chosen is not None else f"{method}: none scored on both yet")
        for lr in sorted(set().union(*by_task.values())):
            cells = [f"{by_task[t][lr]:.2f}" if lr in by_task[t] else "-" for t in TASKS]
            notes = [n for n, holds in (("the rule's pick", lr == chosen), ("shipped default", lr == default)) if holds]
            rate = f"**{lr:g}**" if lr == chosen else f"{lr:g}"
            lines.append(f"| {method} | {rate} | {' | '.join(cells)} | {f'{worst[lr]:.2f}' if lr in worst else '-'} | {', '.join(notes)} |")
    return "\n".join(lines) + f"\n\nThe rule picks: {', '.join(picks)}. Shipped defaults: " + ", ".join(
        f"{m} {PRESETS[m].learning_rate:g}" for m in METHODS) + "."


def ruled_in(text: str) -> set[tuple[str, float]]:
    """(method, rate) of every row of the table in ``text`` that has a worst-case relative accuracy."""
    rows = (row_cells(line) for line in block(text, START, END).splitlines())
    return {(cells[0], float(cells[1].strip("*"))) for cells in rows
            if len(cells) > 2 + len(TASKS) and re.fullmatch(r"[0-9.]+", cells[2 + len(TASKS)])}


def ruled_here(work: Path) -> set[tuple[str, float]]:
    """(method, rate) of every rate that the runs in ``work`` score on every task."""
    return {(method, lr) for method in METHODS
            for lr in worst_relative({task: grid_scores(work, task, method) for task in TASKS})}


def main() -> None:
    args = parse_args()
    require_runs(args.work, args.doc)
    lost = ruled_in(args.doc.read_text() if args.doc.is_file() else "") - ruled_here(args.work)
    if lost:  # the runs here are fewer than the table's (a clean clone with the record, a partial benchmark)
        raise SystemExit(f"{args.work} lacks the seed-0 validation runs of {len(lost)} rate(s) the table in {args.doc} rules on "
                         f"(e.g. {' '.join(f'{m} {lr:g}' for m, lr in sorted(lost)[:3])}); the table is left as it is")
    body = f"Command: `python -m benchmarks defaults` (reads the runs of `benchmarks/quality.py`; validation only).\n\n{table(args.work)}"
    write_doc(args.doc, body, START, END)
    print(body)


if __name__ == "__main__":
    main()
