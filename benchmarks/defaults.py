"""Each preset's default learning rate by the rule of docs/benchmarks.md "Defaults": validation accuracy over both
tasks of the quality benchmark together (SST-2 and RTE), the rate with the best worst-case relative accuracy.

For every method and every rate of its grid that has a seed-0 validation score on a task (``val_acc.json`` of the
run ``runs/bench_quality/<task>/<method>_lr<rate>_s0``, written by benchmarks/quality.py, kept in
``benchmarks/results/defaults.json`` with the scores measured before), the relative accuracy
on that task is the rate's validation accuracy over the best rate's; a rate's worst-case relative accuracy is the
smaller over the tasks, and only rates scored on every task have one. The rule picks the highest (ties: the lower
rate) and the table sets it beside the default the grid set (``GRID_DEFAULTS``). Nothing is trained or
scored here and no test number enters.

    python -m benchmarks defaults [--work runs/bench_quality] [--doc docs/benchmarks.md] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from benchmarks.lib import OLD_RATES, ROOT, recorded_accuracy, write_doc

START, END = "<!-- bench_defaults:start -->", "<!-- bench_defaults:end -->"
TASKS = ["sst2", "rte"]
METHODS = ["xgblora", "cola", "lora"]
LABELS = {"sst2": "SST-2", "rte": "RTE"}
# The rates this grid set as the presets' defaults (xgblora's boosters then started from a random V; its preset
# has since moved to gradient-started boosters at 3e-3 by the booster study's rule: docs/boosters.md).
GRID_DEFAULTS = OLD_RATES


RESULTS = ROOT / "benchmarks" / "results" / "defaults.json"
Scores = dict[str, dict[str, dict[float, float]]]
"""{task: {method: {rate: seed-0 validation accuracy (%)}}}"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks defaults", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_quality")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--report-only", action="store_true", help="the table from the results file alone")
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


def load_scores(path: Path) -> Scores:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())["scores"]
    return {t: {m: {float(lr): acc for lr, acc in rates.items()} for m, rates in methods.items()} for t, methods in data.items()}


def save_scores(path: Path, scores: Scores) -> None:
    data = {t: {m: {f"{lr:g}": acc for lr, acc in sorted(rates.items())} for m, rates in methods.items()} for t, methods in scores.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"scores": data}, indent=1) + "\n")


def merged(kept: Scores, work: Path) -> Scores:
    """The kept scores with every seed-0 validation score in ``work`` added (a score measured again replaces the kept one)."""
    out = {t: {m: dict(rates) for m, rates in methods.items()} for t, methods in kept.items()}
    for task in TASKS:
        for method in METHODS:
            out.setdefault(task, {}).setdefault(method, {}).update(grid_scores(work, task, method))
    return out


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


def table(scores: Scores) -> str:
    """The rule's table: every method's rates with their validation accuracy per task, worst-case relative
    accuracy, the rule's pick and the default the grid set."""
    lines = ["| method | rate | " + " | ".join(f"{LABELS[t]} val. (seed 0)" for t in TASKS) + " | worst relative | |",
             "|---|---|" + "---|" * len(TASKS) + "---|---|"]
    picks = []
    for method in METHODS:
        by_task = {task: scores.get(task, {}).get(method, {}) for task in TASKS}
        worst = worst_relative(by_task)
        chosen, default = pick(worst), GRID_DEFAULTS[method]
        picks.append(f"{method} {chosen:g} (of {len(worst)} rate{'s' * (len(worst) != 1)} scored on both)"
                     if chosen is not None else f"{method}: none scored on both yet")
        for lr in sorted(set().union(*by_task.values())):
            cells = [f"{by_task[t][lr]:.2f}" if lr in by_task[t] else "-" for t in TASKS]
            notes = [n for n, holds in (("the rule's pick", lr == chosen), ("the default it set", lr == default)) if holds]
            rate = f"**{lr:g}**" if lr == chosen else f"{lr:g}"
            lines.append(f"| {method} | {rate} | {' | '.join(cells)} | {f'{worst[lr]:.2f}' if lr in worst else '-'} | {', '.join(notes)} |")
    return "\n".join(lines) + f"\n\nThe rule picks: {', '.join(picks)}. Defaults it set (random V): " + ", ".join(
        f"{m} {GRID_DEFAULTS[m]:g}" for m in METHODS) + "."


def main() -> None:
    args = parse_args()
    scores = load_scores(args.results)
    if not args.report_only:
        scores = merged(scores, args.work)
        save_scores(args.results, scores)
    if not scores:
        raise SystemExit(f"{args.results}: no scores; {args.doc} is left as it is (measure: make bench-defaults)")
    text = body(scores)
    write_doc(args.doc, text, START, END)
    print(text)


def body(scores: Scores) -> str:
    """The section: the command and the rule's table."""
    return f"Command: `python -m benchmarks defaults` (reads the runs of `benchmarks/quality.py`; validation only).\n\n{table(scores)}"


if __name__ == "__main__":
    main()
