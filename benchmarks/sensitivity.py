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

Every number is kept as data in ``--results`` (``benchmarks/results/sensitivity.json``): a number recorded there,
for a row and seed whose run is not in the work folder (a clean clone, where runs/ is empty), is kept with
``--report-only`` instead of becoming "not run yet", so new seeds or rows can be added to a table measured
elsewhere; the table is rendered from the record alone. ``--fresh`` starts from an empty record instead, keeping
only what this invocation measures (after a change to the budget or the data, which the labels do not show).

    .venv/bin/python -m benchmarks sensitivity [--tasks sst2] [--lr 1e-2] [--seeds 0 1] [--long-steps 400 600]
        [--long-lora 1e-3] [--long-xgblora 0] [--grid 3e-3 1e-2 3e-2] [--preset-grids cola=1e-3,3e-3 lora=1e-3]
        [--variants kappa20 k8 ...] [--with train.packing=true ...] [--doc FILE]
"""

from __future__ import annotations

import argparse
import json
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks sensitivity", description=__doc__.split("\n")[0])
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
    p.add_argument("--results", type=Path, default=RESULTS, help="the record every number is kept in (JSON)")
    p.add_argument("--lrs", nargs="*", default=[])
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--fresh", action="store_true",
                   help="with --report-only, leave out the numbers the table already shows whose runs are not here")
    return p.parse_args(argv)


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


Longs = dict[tuple[str, str], "list[tuple[int, float]] | None"]
"""Per (task, long run's label) its validation accuracy by snapshot step (None: not run yet)."""
RESULTS = ROOT / "benchmarks" / "results" / "sensitivity.json"


def load_record(path: Path) -> tuple[Results, Longs, dict]:
    """The record's rows (per (task, label) the accuracy by seed), long runs, and how it was last written."""
    if not path.is_file():
        return {}, {}, {}
    data = json.loads(path.read_text())
    rows = {(r["task"], r["label"]): {int(seed): acc for seed, acc in r["seeds"].items()} for r in data["rows"]}
    longs = {(r["task"], r["label"]): None if r["points"] is None else [tuple(p) for p in r["points"]] for r in data["long"]}
    return rows, longs, {k: data[k] for k in ("command", "seeds", "kept", "lr") if k in data}


def save_record(path: Path, rows: Results, longs: Longs, written: dict) -> None:
    """The record, rows in the table's order, long runs in theirs."""
    data = {**written,
            "rows": [{"task": t, "label": label, "seeds": {str(s): a for s, a in sorted(accs.items()) if a is not None}}
                     for (t, label), accs in rows.items()],
            "long": [{"task": t, "label": label, "points": None if points is None else [list(p) for p in points]}
                     for (t, label), points in longs.items()]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


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


def measure(benches: dict[str, TaskBench], args: argparse.Namespace, longs: Longs) -> Results:
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
               results: Results, longs: Longs) -> None:
    """One ``method`` run of ``steps`` steps at ``lr``, seed 0, validation accuracy at 8 snapshots, put in ``longs``
    (with ``--report-only`` and no run here, None: "not run yet", which does not replace a recorded run)."""
    budget = replace(bench.budget, steps=steps)
    label = f"{method} lr {lr:g}, {steps} steps{suffix(args)}"
    try:
        run = train_run(bench.runner, bench.work, budget, bench.data["train"], method, lr, 0,
                        {**dict(args.with_keys), "train.max_steps": steps}, snapshots=8)
        longs[(bench.budget.name, label)] = [
            (step, accuracy(bench.runner, str(run["dir"]), "choice", bench.data["val"], run["dir"] / f"val_step{step}.json", "--step", str(step)))
            for step in range(steps // 8, steps + 1, steps // 8)]
    except Missing:
        longs[(bench.budget.name, label)] = None
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


def merged(args: argparse.Namespace, results: Results, longs: Longs) -> tuple[Results, Longs]:
    """This invocation's rows and long runs laid over the record (nothing with ``--fresh``): its numbers win, the
    record's other rows, seeds and long runs stay; a long run not run yet does not hide a finished one."""
    kept_rows, kept_longs, _ = ({}, {}, {}) if args.fresh else load_record(args.results)
    table: Results = {key: dict(row) for key, row in kept_rows.items()}
    for key, row in results.items():
        shown_row = table.setdefault(key, {})
        shown_row.update({seed: acc for seed, acc in row.items() if acc is not None or seed not in shown_row})
    lines = dict(kept_longs)
    lines.update({key: points for key, points in longs.items() if key not in lines or points is not None})
    return table, lines


def long_line(task: str, label: str, points: "list[tuple[int, float]] | None") -> str:
    if points is None:
        return f"| {task} | {label} | not run yet | |"
    return f"| {task} | {label}, by step | {', '.join(f'{step}: {acc:.1f}' for step, acc in points)} | seed 0 |"


def render(args: argparse.Namespace, table: Results, long_runs_: Longs, written: dict) -> str:
    """The section: how it was written, then a line per row and per long run (from the record alone)."""
    lines = table_lines(args, table) + [long_line(*key, long_runs_[key]) for key in sorted(long_runs_, key=long_order)]
    note = " Rows, seeds and long runs it did not cover are kept from the table as it stood." if written["kept"] else ""
    head = ["| task | setting | validation accuracy, mean ± sd (vs the preset at the rate, same seeds) | by seed |", "|---|---|---|---|"]
    return (f"Command: `{written['command']}`; validation accuracy (%), seeds {' '.join(map(str, written['seeds']))}.{note}\n\n"
            + "\n".join(head + lines))


def write(args: argparse.Namespace, results: Results, longs: Longs) -> str:
    """Merge this invocation's numbers into the record, save it, and render the table into ``--doc``."""
    table, long_lines = merged(args, results, longs)
    mine = set(results) | set(longs)
    kept = any(key not in mine for key in [*table, *long_lines]) or table_seeds(args, table) != sorted(args.seeds)
    written = {"command": ("python -m benchmarks sensitivity " + shlex.join(sys.argv[1:])).strip(), "lr": args.lr,
               "seeds": table_seeds(args, table), "kept": kept}
    ordered = {key: table[key] for key in row_order(args, table)}
    save_record(args.results, ordered, {key: long_lines[key] for key in sorted(long_lines, key=long_order)}, written)
    body = render(args, ordered, long_lines, written)
    write_doc(args.doc, body, START, END)
    return body


def main() -> None:
    args = parse_args()
    runner = Runner(args.report_only)
    benches = {task: TaskBench(args, runner, BUDGETS[task]) for task in args.tasks}
    longs: Longs = {}
    results = measure(benches, args, longs)
    for steps in (n for n in args.long_steps if n):
        for bench in benches.values():
            for method, lr in long_runs(args):
                long_curve(bench, args, method, lr, steps, results, longs)
    print(write(args, results, longs))


if __name__ == "__main__":
    main()
