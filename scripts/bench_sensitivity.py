"""How sensitive xgblora is, on validation only: its learning rate over seeds, and kappa, k, rank, alpha, the block
schedule and the budget around the chosen rate (GLUE SST-2 and RTE, the splits of scripts/bench_quality.py); and
the cola and lora presets' learning rates over the same seeds (``--preset-grids``).

Every run is the budget of bench_quality.py (100 steps of 8 examples) except the long ones (xgblora at ``--lr`` and,
the equal-steps reference, lora at ``--long-lora``); every number is validation accuracy (held-out training
records, label scoring), never test. Runs are shared with bench_quality.py (same work folder and names), so its
grid's seed-0 runs are reused. The table is rewritten after every run, so
what is finished is visible and an interrupted benchmark continues where it stopped.

    .venv/bin/python scripts/bench_sensitivity.py [--tasks sst2] [--lr 1e-2] [--seeds 0 1] [--long-steps 400 600]
        [--long-lora 1e-3] [--grid 3e-3 1e-2 3e-2] [--preset-grids cola=1e-3,3e-3 lora=1e-3] [--variants kappa20 k8 ...]
        [--doc FILE]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from bench_quality import BUDGETS, TaskBench
from benchlib import (
    GLUE_DIR,
    ROOT,
    Missing,
    Runner,
    accuracy,
    spread,
    train_run,
    write_doc,
)

START, END = "<!-- bench_sensitivity:start -->", "<!-- bench_sensitivity:end -->"
# (what the table calls it, recipe keys), one change at a time around the xgblora preset; the ones that might close
# the gap to lora at short budgets (restarts of the optimizer, fewer boosters, more blocks) first, since the runs go
# seed-major and an interrupted benchmark has then measured those
VARIANTS = {
    "carry_moments": ("AdamW second moments carried across boosters (variant)", {"train.carry_moments": True}),
    "kappa20": ("kappa = 20", {"steps_per_booster": 20}), "k8": ("k = 8", {"layers_per_booster": 8}),
    "rewarmup": ("re-warmup 2 steps a booster (variant)", {"train.rewarmup_steps": 2}),
    "cycle": ("block schedule: cycle (variant)", {"block_schedule": "cycle"}),
    "kappa5": ("kappa = 5", {"steps_per_booster": 5}), "k2": ("k = 2", {"layers_per_booster": 2}),
    "rank2": ("rank 2", {"rank": 2}),
    "alpha1": ("alpha = 1 (scale 1)", {"alpha": 1}), "alpha8": ("alpha = 8 (scale 8)", {"alpha": 8}),
    "k8_kappa20": ("k = 8 and kappa = 20", {"layers_per_booster": 8, "steps_per_booster": 20}),
}
PRESET_GRIDS = ["cola=3e-4,1e-3,3e-3,1e-2", "lora=1e-3,3e-3,1e-2"]
"""The other presets' rate rows by default: bench_quality's grids (lora's without 3e-4, which SST-2 left 6 points
behind at seed 0)."""
Row = tuple[str, str, float, dict | None]
"""(the table's label, method, learning rate, extra recipe keys or None)."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sst2"], choices=list(BUDGETS))
    p.add_argument("--lr", type=float, default=1e-2, help="the xgblora rate the variants are taken around")
    p.add_argument("--grid", type=float, nargs="*", default=[3e-3, 1e-2, 3e-2], help="rates of the xgblora preset (none: no rows)")
    p.add_argument("--preset-grids", nargs="*", default=[preset_grid(g) for g in PRESET_GRIDS], type=preset_grid,
                   metavar="METHOD=LR,LR",
                   help="rates of the cola or lora preset, after xgblora's grid (none: no rows)")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                   help="which variants, in this order (none: no rows); two runs in parallel can split them")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--long-steps", type=int, nargs="+", default=[400, 600],
                   help="one run of each of these lengths, scored at 8 snapshots (0: none)")
    p.add_argument("--long-lora", type=float, default=1e-3,
                   help="also a lora run of each --long-steps at this rate, the equal-steps reference (0: none)")
    p.add_argument("--glue", type=Path, default=GLUE_DIR)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_quality")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--lrs", nargs="*", default=[])
    p.add_argument("--report-only", action="store_true")
    return p.parse_args()


def preset_grid(text: str) -> tuple[str, list[float]]:
    """``cola=1e-3,3e-3`` -> ("cola", [0.001, 0.003]); a clear error for anything else."""
    method, _, rates = text.partition("=")
    if method not in ("cola", "lora") or not rates:
        raise argparse.ArgumentTypeError(f"{text!r}: expected cola=LR,LR or lora=LR,LR")
    try:
        return method, [float(v) for v in rates.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: the rates must be numbers, e.g. lora=1e-3,3e-3") from None


def val(bench: TaskBench, method: str, lr: float, seed: int, extra: dict | None = None) -> float | None:
    """Validation accuracy of one run (None with --report-only when it has not run yet)."""
    try:
        run = train_run(bench.runner, bench.work, bench.budget, bench.data["train"], method, lr, seed, extra)
        return bench.val_acc(str(run["dir"]), run["dir"])
    except Missing:
        return None


def cells(accs: list[float | None], reference: list[float | None] | None = None) -> str:
    """``mean ± sd (shift) | by seed |``; the shift is against ``reference``'s mean over the seeds both have."""
    done = [a for a in accs if a is not None]
    if not done:
        return "not run yet | |"
    shift = ""
    if reference is not None:
        pairs = [(a, r) for a, r in zip(accs, reference) if a is not None and r is not None]
        if pairs:
            shift = f" ({statistics.mean(a - r for a, r in pairs):+.1f})"
    return f"{spread(done)}{shift} | {' '.join('-' if a is None else f'{a:.1f}' for a in accs)} |"


def settings(args: argparse.Namespace) -> list[Row]:
    """The table's rows: xgblora's rate grid first, then the other presets' grids, then the variants at ``--lr``."""
    grids = [("xgblora", args.grid), *args.preset_grids]
    return ([(f"{method} lr {lr:g}", method, lr, None) for method, rates in grids for lr in rates]
            + [(f"{label}, lr {args.lr:g}", "xgblora", args.lr, extra) for label, extra in map(VARIANTS.get, args.variants)])


def table_lines(args: argparse.Namespace, results: dict[tuple[str, str], dict[int, float | None]]) -> list[str]:
    """One table line per (task, row) measured so far; shifts are against the preset at ``--lr`` on the same
    seeds (the mean of the per-seed differences)."""
    lines = []
    for task in args.tasks:
        preset = results.get((task, f"xgblora lr {args.lr:g}"), {})
        reference = [preset.get(seed) for seed in args.seeds]
        for label, _, _, extra in settings(args):
            accs = results.get((task, label))
            if accs is not None:
                lines.append(f"| {task} | {label} | {cells([accs.get(seed) for seed in args.seeds], reference if extra is not None else None)}")
    return lines


def measure(benches: dict[str, TaskBench], args: argparse.Namespace) -> list[str]:
    """Every row's validation accuracy, seed-major (every row with the first seed before any with the second), the
    table rewritten after each run; returns the table's lines."""
    results: dict[tuple[str, str], dict[int, float | None]] = {}
    for seed in args.seeds:
        for task, bench in benches.items():
            for label, method, lr, extra in settings(args):
                results.setdefault((task, label), {})[seed] = val(bench, method, lr, seed, extra)
                write(args, table_lines(args, results))
    return table_lines(args, results)


def long_curve(bench: TaskBench, args: argparse.Namespace, method: str, lr: float, steps: int, lines: list[str]) -> None:
    """One ``method`` run of ``steps`` steps at ``lr``, seed 0, validation accuracy at 8 snapshots."""
    budget = replace(bench.budget, steps=steps)
    label = f"{method} lr {lr:g}, {steps} steps"
    try:
        run = train_run(bench.runner, bench.work, budget, bench.data["train"], method, lr, 0,
                        {"train.max_steps": steps}, snapshots=8)
    except Missing:
        lines.append(f"| {bench.budget.name} | {label} | not run yet | |")
        return write(args, lines)
    points = []
    for step in range(steps // 8, steps + 1, steps // 8):
        points.append(f"{step}: {accuracy(bench.runner, str(run['dir']), 'choice', bench.data['val'], run['dir'] / f'val_step{step}.json', '--step', str(step)):.1f}")
    lines.append(f"| {bench.budget.name} | {label}, by step | {', '.join(points)} | seed 0 |")
    write(args, lines)


def write(args: argparse.Namespace, lines: list[str]) -> None:
    command = "python scripts/bench_sensitivity.py " + shlex.join(sys.argv[1:])
    head = ["| task | setting | validation accuracy, mean ± sd (vs the preset at the rate, same seeds) | by seed |", "|---|---|---|---|"]
    write_doc(args.doc, f"Command: `{command.strip()}`; validation accuracy (%), seeds {' '.join(map(str, args.seeds))}.\n\n"
              + "\n".join(head + lines), START, END)


def main() -> None:
    args = parse_args()
    runner = Runner(args.report_only)
    benches = {task: TaskBench(args, runner, BUDGETS[task]) for task in args.tasks}
    lines = measure(benches, args)
    long_runs = [("xgblora", args.lr)] + ([("lora", args.long_lora)] if args.long_lora else [])
    for steps in (n for n in args.long_steps if n):
        for bench in benches.values():
            for method, lr in long_runs:
                long_curve(bench, args, method, lr, steps, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
