"""How sensitive xgblora is, on validation only: its learning rate over seeds, and kappa, k, rank, alpha, the block
schedule and the budget around the chosen rate (GLUE SST-2 and RTE, the splits of benchmarks/quality.py); and
the cola and lora presets' learning rates over the same seeds (``--preset-grids``).

Every run is the budget of bench_quality.py (100 steps of 8 examples) except the long ones (xgblora at ``--lr`` and,
the equal-steps reference, lora at ``--long-lora``); every number is validation accuracy (held-out training
records, label scoring), never test. Runs are shared with bench_quality.py (same work folder and names), so its
grid's seed-0 runs are reused. The table is rewritten after every run, so
what is finished is visible and an interrupted benchmark continues where it stopped.

An invocation adds to the table, it does not replace it: each rewrite reads the table as it stands in ``--doc`` and
keeps the rows, seeds and long runs this invocation does not cover. So a benchmark split over processes (by
``--seeds``, ``--tasks``, ``--variants``) can share one ``--doc``, each adding its rows.

The table is also its own record: a number it already shows, for a row and seed whose run is not in the work folder
(a clean clone, where runs/ is empty), is kept with ``--report-only`` instead of becoming "not run yet", so new
seeds or rows can be added to a table measured elsewhere. ``--fresh`` starts from an empty table instead, keeping
only what this invocation measures (after a change to the budget or the data, which the labels do not show).

    .venv/bin/python -m benchmarks sensitivity [--tasks sst2] [--lr 1e-2] [--seeds 0 1] [--long-steps 400 600]
        [--long-lora 1e-3] [--long-xgblora 0] [--grid 3e-3 1e-2 3e-2] [--preset-grids cola=1e-3,3e-3 lora=1e-3]
        [--variants kappa20 k8 ...] [--with train.packing=true ...] [--doc FILE]
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks.lib import (
    GLUE_DIR,
    ROOT,
    Missing,
    Runner,
    accuracy,
    block,
    row_cells,
    spread,
    train_run,
    write_doc,
)
from benchmarks.quality import BUDGETS, TaskBench

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
XGBLORA_GRID = [3e-3, 1e-2, 3e-2]
PRESET_GRIDS = ["cola=3e-4,1e-3,3e-3,1e-2", "lora=1e-3,3e-3,1e-2"]
"""The other presets' rate rows by default: bench_quality's grids (lora's without 3e-4, which SST-2 left 6 points
behind at seed 0)."""
Row = tuple[str, str, float, dict | None]
"""(the table's label, method, learning rate, extra recipe keys or None)."""
Results = dict[tuple[str, str], dict[int, "float | None"]]
"""Per (task, row label) the validation accuracy by seed (None: not run yet)."""
KEYS_SUFFIX = r" \[.*\]"
"""The ``--with`` keys at the end of a label (``suffix``)."""
GRID_LABEL = re.compile(rf"(xgblora|cola|lora) lr \S+({KEYS_SUFFIX})?")
"""A rate row's label (no shift against the preset); every other row is a change around the preset."""
LONG_LABEL = re.compile(r", (\d+) steps\b")
"""Where a long run's label gives its length: ``xgblora lr 0.01, 400 steps``."""
VAL_SIZES = {name: 2 * budget.val for name, budget in BUDGETS.items()}
"""Validation records per task: ``val`` per class, and both tasks are binary."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sst2"], choices=list(BUDGETS))
    p.add_argument("--lr", type=float, default=1e-2, help="the xgblora rate the variants are taken around")
    p.add_argument("--grid", type=float, nargs="*", default=XGBLORA_GRID, help="rates of the xgblora preset (none: no rows)")
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
    p.add_argument("--long-xgblora", type=float, default=None,
                   help="the rate of xgblora's run of each --long-steps (default: --lr; 0: none, e.g. to add lora's alone)")
    p.add_argument("--with", dest="with_keys", nargs="*", default=[], type=recipe_key, metavar="KEY=VALUE",
                   help="recipe keys for every run of this invocation (e.g. train.packing=true): in each run's name "
                        "and, in brackets, each row's label")
    p.add_argument("--glue", type=Path, default=GLUE_DIR)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_quality")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--lrs", nargs="*", default=[])
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--fresh", action="store_true",
                   help="with --report-only, leave out the numbers the table already shows whose runs are not here")
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


def recipe_key(text: str) -> tuple[str, str]:
    """``train.packing=true`` -> ("train.packing", "true"); a clear error without ``=``."""
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. train.packing=true")
    return key, value


def suffix(args: argparse.Namespace) -> str:
    """What ``--with`` adds to every label: `` [packing=true batch_size=3]`` (nothing without it)."""
    keys = " ".join(f"{key.removeprefix('train.')}={value}" for key, value in args.with_keys)
    return f" [{keys}]" if keys else ""


Shown = tuple[dict[tuple[str, str], dict[int, float]], dict[tuple[str, str], str]]
"""What a table shows: per (task, row label) the accuracy by seed, and per (task, long run's label) its finished line."""


def shown(table: str, sizes: dict[str, int]) -> Shown:
    """Parse a table this script wrote (the text between its markers): the seeds come from its caption's
    ``seeds 0 1 2.``; a row's ``by seed`` cells are matched to them in order, ``-`` and "not run yet" rows are
    skipped, and a long run's line (``..., by step``, or one not run yet) is kept whole. ``sizes``: each task's
    validation records, to undo the cells' rounding to 0.1 (a score is a whole number of records: 84.2 of 400 is
    337, 84.25%), so that means and shifts come out as they did from the runs."""
    found = re.search(r"seeds ((?:\d+ ?)+)\.", table)
    seeds = [int(s) for s in found.group(1).split()] if found else []
    accs: dict[tuple[str, str], dict[int, float]] = {}
    long_lines: dict[tuple[str, str], str] = {}
    for line in table.splitlines():
        cols = row_cells(line)
        if len(cols) != 4 or cols[0] in ("task", "---"):
            continue
        task, label, _, by_seed = cols
        if label.endswith(", by step") or (cols[2] == "not run yet" and LONG_LABEL.search(label)):
            long_lines[(task, label.removesuffix(", by step"))] = line
            continue
        if cols[2] == "not run yet":
            continue
        n = sizes.get(task)
        accs[(task, label)] = {seed: float(a) if n is None else 100 * (round(float(a) * n / 100) / n)
                               for seed, a in zip(seeds, by_seed.split()) if a != "-"}
    return accs, long_lines


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
    """The table's rows: xgblora's rate grid first, then the other presets' grids, then the variants at ``--lr``;
    every row with the ``--with`` keys (the grids' rows: None without them)."""
    grids = [("xgblora", args.grid), *args.preset_grids]
    common, tag = dict(args.with_keys), suffix(args)
    return ([(f"{method} lr {lr:g}{tag}", method, lr, common or None) for method, rates in grids for lr in rates]
            + [(f"{label}, lr {args.lr:g}{tag}", "xgblora", args.lr, {**common, **extra})
               for label, extra in map(VARIANTS.get, args.variants)])


def row_order(args: argparse.Namespace, results: Results) -> list[tuple[str, str]]:
    """The (task, label) rows of ``results`` in one order whatever the invocation: tasks as in ``BUDGETS``; rows as
    the default invocation lists them at ``--lr``, then this invocation's others, then any others the table had."""
    default = argparse.Namespace(grid=XGBLORA_GRID, preset_grids=[preset_grid(g) for g in PRESET_GRIDS], lr=args.lr,
                                 variants=list(VARIANTS), with_keys=[])
    labels = [label for label, *_ in settings(default) + settings(args)] + [label for _, label in results]
    return [(task, label) for task in BUDGETS for label in dict.fromkeys(labels) if (task, label) in results]


def table_seeds(args: argparse.Namespace, results: Results) -> list[int]:
    """The table's seed columns: this invocation's and every seed a row has a number for."""
    return sorted(set(args.seeds) | {seed for accs in results.values() for seed, acc in accs.items() if acc is not None})


def table_lines(args: argparse.Namespace, results: Results) -> list[str]:
    """One table line per (task, row) in ``results``; a change's shift is against the preset at ``--lr`` on the
    same seeds (the mean of the per-seed differences), with the same ``--with`` keys as the row."""
    seeds = table_seeds(args, results)
    lines = []
    for task, label in row_order(args, results):
        keys = re.search(rf"{KEYS_SUFFIX}$", label)
        preset = results.get((task, f"xgblora lr {args.lr:g}{keys.group(0) if keys else ''}"), {})
        reference = None if GRID_LABEL.fullmatch(label) else [preset.get(seed) for seed in seeds]
        lines.append(f"| {task} | {label} | {cells([results[(task, label)].get(seed) for seed in seeds], reference)}")
    return lines


def measure(benches: dict[str, TaskBench], args: argparse.Namespace, longs: dict[tuple[str, str], str]) -> Results:
    """Every row's validation accuracy, seed-major (every row with the first seed before any with the second), the
    table rewritten after each run (where a number cannot be measured here, ``--report-only`` and the run not in
    the work folder, the table keeps the one it shows). Returns this invocation's rows (None: not measured)."""
    results: Results = {}
    for seed in args.seeds:
        for task, bench in benches.items():
            for label, method, lr, extra in settings(args):
                results.setdefault((task, label), {})[seed] = val(bench, method, lr, seed, extra)
                write(args, results, longs)
    return results


def long_curve(bench: TaskBench, args: argparse.Namespace, method: str, lr: float, steps: int,
               results: Results, longs: dict[tuple[str, str], str]) -> None:
    """One ``method`` run of ``steps`` steps at ``lr``, seed 0, validation accuracy at 8 snapshots, its line put in
    ``longs`` (with ``--report-only`` and no run here, "not run yet", which does not replace a line the table shows)."""
    budget = replace(bench.budget, steps=steps)
    label = f"{method} lr {lr:g}, {steps} steps{suffix(args)}"
    try:
        run = train_run(bench.runner, bench.work, budget, bench.data["train"], method, lr, 0,
                        {**dict(args.with_keys), "train.max_steps": steps}, snapshots=8)
    except Missing:
        longs[(bench.budget.name, label)] = f"| {bench.budget.name} | {label} | not run yet | |"
        write(args, results, longs)
        return
    points = []
    for step in range(steps // 8, steps + 1, steps // 8):
        points.append(f"{step}: {accuracy(bench.runner, str(run['dir']), 'choice', bench.data['val'], run['dir'] / f'val_step{step}.json', '--step', str(step)):.1f}")
    longs[(bench.budget.name, label)] = f"| {bench.budget.name} | {label}, by step | {', '.join(points)} | seed 0 |"
    write(args, results, longs)


def long_runs(args: argparse.Namespace) -> list[tuple[str, float]]:
    """(method, rate) of the long runs: xgblora at ``--long-xgblora`` (default ``--lr``), then lora at ``--long-lora``;
    a rate of 0 leaves that method out."""
    xgblora_lr = args.lr if args.long_xgblora is None else args.long_xgblora
    return [(method, lr) for method, lr in (("xgblora", xgblora_lr), ("lora", args.long_lora)) if lr]


def long_order(key: tuple[str, str]) -> tuple[int, int, int, str]:
    """Long runs by length, then task (as in ``BUDGETS``), then xgblora before lora: ``(task, "lora lr 0.001, 400
    steps")`` -> ``(400, 0, 1, ...)``."""
    task, label = key
    steps = LONG_LABEL.search(label)
    return int(steps.group(1)) if steps else 0, list(BUDGETS).index(task), label.startswith("lora"), label


def merged(args: argparse.Namespace, results: Results, longs: dict[tuple[str, str], str]) -> tuple[Results, dict[tuple[str, str], str]]:
    """This invocation's rows and long runs laid over the table as ``--doc`` holds it now (nothing with
    ``--fresh``): its numbers win, the table's other rows, seeds and long runs stay; a "not run yet" long run does
    not hide a finished one."""
    text = "" if args.fresh or not args.doc.is_file() else args.doc.read_text()
    accs, lines = shown(block(text, START, END), VAL_SIZES)
    table: Results = {key: dict(row) for key, row in accs.items()}
    for key, row in results.items():
        shown_row = table.setdefault(key, {})
        shown_row.update({seed: acc for seed, acc in row.items() if acc is not None or seed not in shown_row})
    lines.update({key: line for key, line in longs.items() if key not in lines or "not run yet" not in line})
    return table, lines


def write(args: argparse.Namespace, results: Results, longs: dict[tuple[str, str], str]) -> list[str]:
    """Rewrite the table in ``--doc``: this invocation's rows and long runs merged with the table there; returns
    the table's lines."""
    table, long_lines = merged(args, results, longs)
    lines = table_lines(args, table) + [long_lines[key] for key in sorted(long_lines, key=long_order)]
    mine = set(results) | set(longs)
    kept = any(key not in mine for key in [*table, *long_lines]) or table_seeds(args, table) != sorted(args.seeds)
    command = "python -m benchmarks sensitivity " + shlex.join(sys.argv[1:])
    note = " Rows, seeds and long runs it did not cover are kept from the table as it stood." if kept else ""
    head = ["| task | setting | validation accuracy, mean ± sd (vs the preset at the rate, same seeds) | by seed |", "|---|---|---|---|"]
    write_doc(args.doc, f"Command: `{command.strip()}`; validation accuracy (%), seeds {' '.join(map(str, table_seeds(args, table)))}.{note}\n\n"
              + "\n".join(head + lines), START, END)
    return lines


def main() -> None:
    args = parse_args()
    runner = Runner(args.report_only)
    benches = {task: TaskBench(args, runner, BUDGETS[task]) for task in args.tasks}
    longs: dict[tuple[str, str], str] = {}
    results = measure(benches, args, longs)
    for steps in (n for n in args.long_steps if n):
        for bench in benches.values():
            for method, lr in long_runs(args):
                long_curve(bench, args, method, lr, steps, results, longs)
    print("\n".join(write(args, results, longs)))


if __name__ == "__main__":
    main()
