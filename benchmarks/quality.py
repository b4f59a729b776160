"""Does fine-tuning help, and how do xgblora, cola and lora compare where the model can learn? (GLUE SST-2 and RTE)

Protocol (every step goes through the `xgblora` command line, as a user would run it):
  1. Per task, cut class-balanced training and validation records from GLUE's *training* TSV (benchmarks/lib.py);
     the test split is GLUE's dev (its test labels are not public). SST-2's cut is the quickstart's data/ slice.
  2. Per method, the learning rate: with ``--rates defaults`` (``make bench-quality``) the preset's shipped rate,
     which ``benchmarks/defaults.py`` chose on these validation splits from the ``--rates grid`` runs; with
     ``--rates grid``, train every rate of the method's grid with seed 0 and keep the one with the best validation
     accuracy (``xgblora eval RUN --task choice --data val.jsonl``, label scoring). Then train the rate with every
     seed. Same optimizer steps, batch, sequence length, warmup and dtype for every method.
  3. ``control``: the xgblora preset with *one* rank-1 booster for the whole run (same number of random blocks,
     never merged), at xgblora's chosen rate: what boosting adds over a single small adapter.
  4. Score the base model and every final run on the test split (``xgblora eval --task sst2|rte``), and every
     final run at its snapshots (``--step``) on a seeded test subset: accuracy against steps and wall-clock.
  5. Write tables between the bench_quality markers of docs/benchmarks.md, a learning-curve PNG, and the loss
     curves of the seed-0 runs (``xgblora report``).

Runs and their evaluations go ``--jobs`` at a time, the cores split between them; the base model is bf16 on a CPU
with bf16 arithmetic (``--dtype auto``: 1.35-1.65x faster there, benchmarks/dtype.py) and fp32 elsewhere.
Finished runs and evaluations in ``--work`` are reused, so an interrupted benchmark continues where it stopped;
``--report-only`` writes the tables from what is finished.

    .venv/bin/python -m benchmarks quality [--tasks sst2 rte] [--seeds 0 1 2] [--rates defaults|grid] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from benchmarks.lib import (
    GLUE_DIR,
    ROOT,
    Missing,
    Runner,
    TaskBudget,
    accuracy,
    chosen_dtype,
    cut_glue,
    require_runs,
    run_side_by_side,
    save_figure,
    spread,
    step_times_file,
    train_run,
    write_doc,
    write_records,
)
from xgblora_cli.evaluation.tasks.glue import GLUE
from xgblora_cli.recipe import PRESETS

BUDGETS = {
    "sst2": TaskBudget("sst2", train=1000, val=200, steps=100, batch=8, seq=128, min_words=5),
    "rte": TaskBudget("rte", train=1040, val=150, steps=100, batch=8, seq=256),
}
GRIDS = {"xgblora": [3e-3, 1e-2, 3e-2], "cola": [3e-4, 1e-3, 3e-3, 1e-2], "lora": [3e-4, 1e-3, 3e-3, 1e-2]}
# ``--rates defaults``: each preset's shipped rate, chosen by bench_defaults.py on validation from GRIDS' runs
DEFAULT_RATES = {method: [PRESETS[method].learning_rate] for method in GRIDS}
# test questions per learning-curve point (a seeded subset; the end point uses the whole split): RTE's pairs are
# long, and a point on all its 277 would cost nearly a training run's time on 2 cores
CURVE_LIMITS = {"sst2": 200, "rte": 100}
START, END = "<!-- bench_quality:start -->", "<!-- bench_quality:end -->"


def outputs(rates: str) -> tuple[str, str, str]:
    """(name, doc start marker, doc end marker) of what ``--rates`` writes: the shipped-rate comparison and the rate
    grids each have their own tables and plots (``NAME_curves.png``, ``NAME_loss.png``), so neither overwrites the other."""
    name = "bench_quality" if rates == "defaults" else "bench_quality_grid"
    return name, f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    p.add_argument("--methods", nargs="+", default=[*GRIDS, "control"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lrs", nargs="*", default=[], metavar="[TASK:]METHOD=LR,LR",
                   help="replace a method's learning-rate grid, for every task or (with TASK:) one task, "
                        "e.g. xgblora=1e-2 rte:lora=1e-3; control=LR runs the control at LR instead of "
                        "xgblora's chosen rate (so it can run without xgblora in --methods)")
    p.add_argument("--rates", choices=["defaults", "grid"], default="defaults",
                   help="defaults: each preset's shipped rate (chosen on validation by bench_defaults.py from the "
                        "grid's runs); grid: choose again, training every rate of each method's grid (hours more)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="the frozen base's dtype; auto: bfloat16 on a CPU with bf16 arithmetic (amx_bf16 or "
                        "avx512_bf16), else float32")
    p.add_argument("--jobs", type=int, default=2, help="runs and evaluations side by side, the cores split between them")
    p.add_argument("--glue", type=Path, default=GLUE_DIR)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_quality")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--report-only", action="store_true", help="write the tables from finished results only; run nothing")
    return p.parse_args()


def grids(task: str, overrides: list[str], base: dict[str, list[float]] = GRIDS) -> dict[str, list[float]]:
    """Each method's learning-rate grid for ``task``: ``base`` (GRIDS or DEFAULT_RATES), replaced by
    ``METHOD=LR,LR`` overrides for every task and then by ``TASK:METHOD=LR,LR`` overrides for this one."""
    chosen = dict(base)
    for scoped in (False, True):
        for item in overrides:
            key, values = item.split("=", 1)
            scope, _, method = key.rpartition(":")
            if bool(scope) == scoped and scope in ("", task):
                chosen[method] = [float(v) for v in values.split(",")]
    return chosen


class TaskBench:
    """One task's runs, validation choices, test scores and learning curves."""

    def __init__(self, args: argparse.Namespace, runner: Runner, budget: TaskBudget,
                 rates: dict[str, list[float]] = GRIDS, extra: dict | None = None) -> None:
        """``rates``: each method's rates before ``args.lrs`` (GRIDS or DEFAULT_RATES); ``extra``: more recipe keys
        for every run (bench_quality's own: the dtype)."""
        self.args, self.runner, self.budget = args, runner, budget
        self.work = args.work
        train, val = cut_glue(args.glue, budget)
        self.data = {"train": args.work / budget.name / "train.jsonl", "val": args.work / budget.name / "val.jsonl"}
        write_records(self.data["train"], budget.name, train)
        write_records(self.data["val"], budget.name, val)
        self.test = args.glue / GLUE[budget.name].folder / "dev.tsv"
        self.grids = grids(budget.name, args.lrs, rates)
        self.extra = extra

    def run(self, method: str, lr: float, seed: int) -> dict:
        return train_run(self.runner, self.work, self.budget, self.data["train"], method, lr, seed, self.extra)

    def val_acc(self, target: str, folder: Path) -> float:
        return accuracy(self.runner, target, "choice", self.data["val"], folder / "val_acc.json")

    def test_acc(self, target: str, folder: Path, step: int | None = None) -> float:
        if step is None:
            return accuracy(self.runner, target, self.budget.name, self.test, folder / "test_acc.json")
        return accuracy(self.runner, target, self.budget.name, self.test, folder / f"curve_step{step}.json",
                        "--step", str(step), "--limit", str(CURVE_LIMITS[self.budget.name]))

    def grid_point(self, method: str, lr: float, seed: int) -> float:
        """Train (or reuse) one run of a rate grid and return its validation accuracy."""
        run = self.run(method, lr, seed)
        return self.val_acc(str(run["dir"]), run["dir"])

    def choose(self, method: str, grid: list[float]) -> tuple[float, dict[float, float]]:
        """The rate of ``grid`` with the best validation accuracy (ties: the lower rate), and every rate's accuracy;
        a grid of one rate is that rate, nothing trained or scored for it here."""
        if len(grid) == 1:
            return grid[0], {}
        scores = {lr: self.grid_point(method, lr, self.args.seeds[0]) for lr in grid}
        best = max(sorted(scores), key=lambda lr: scores[lr])
        print(f"{self.budget.name} {method}: validation accuracy by rate {scores} -> {best:g}", flush=True)
        return best, scores

    def base_scores(self) -> tuple[float, float]:
        """The untouched base model's (validation, test) accuracy."""
        folder = self.work / self.budget.name / "base"
        return self.val_acc("smollm2-135m", folder), self.test_acc("smollm2-135m", folder)

    def finish(self, method: str, lr: float, seed: int) -> tuple[dict, float, list[tuple[int, float, float]]]:
        """Train (or reuse) one run of the comparison and score (or read back) it: (run, accuracy on the whole test
        split, its curve)."""
        run = self.run(method, lr, seed)
        return run, self.test_acc(str(run["dir"]), run["dir"]), self.curve(run)

    def curve(self, run: dict) -> list[tuple[int, float, float]]:
        """(step, seconds of training, test accuracy on the curve subset) at every snapshot of ``run``."""
        steps = self.budget.steps
        every = max(1, steps // 4)
        points = []
        for step in range(every, steps + 1, every):
            points.append((step, run["step_s"] * step, self.test_acc(str(run["dir"]), run["dir"], step)))
        return points


class NoRate(Exception):
    """The control's rate is xgblora's chosen one, and xgblora has none (not run, or not in --methods)."""


def rate_of(bench: TaskBench, method: str, chosen: dict[str, float]) -> tuple[float, dict[float, float], str]:
    """(rate, validation accuracy by rate of the grid, where a rate not chosen here came from) for ``method``;
    ``chosen``: the rates of the methods before it. Raises Missing while a grid run is unfinished (--report-only)."""
    if method == "control":
        given = "control" in bench.grids
        rate = bench.grids["control"][0] if given else chosen.get("xgblora")
        if rate is None:
            raise NoRate(method)
        return rate, {}, "given by --lrs" if given else "xgblora's"
    best, scores = bench.choose(method, bench.grids[method])
    source = "" if scores else ("the preset's default" if bench.grids[method] == DEFAULT_RATES.get(method) else "given by --lrs")
    return best, scores, source


def chosen_rates(bench: TaskBench, methods: list[str], unfinished: list[str]) -> dict[str, tuple[float, dict[float, float], str]]:
    """:func:`rate_of` for every method that has one yet; the others are named in ``unfinished``."""
    rates: dict[str, tuple[float, dict[float, float], str]] = {}
    for method in methods:
        try:
            rates[method] = rate_of(bench, method, {m: rate[0] for m, rate in rates.items()})
        except NoRate:
            unfinished.append(f"{bench.budget.name} control (needs xgblora's rate, or --lrs control=LR)")
        except Missing:
            unfinished.append(f"{bench.budget.name} {method} (learning-rate grid)")
    return rates


def method_rows(bench: TaskBench, methods: list[str], unfinished: list[str]) -> dict[str, dict]:
    """Per method: chosen rate, validation accuracy by rate, test accuracies by seed, curves, wall times."""
    rows: dict[str, dict] = {}
    for method, (best, grid_scores, source) in chosen_rates(bench, methods, unfinished).items():
        runs, tests, curves = [], [], []
        for seed in bench.args.seeds:
            try:
                run, test, curve = bench.finish(method, best, seed)
                tests.append(test)  # appended together: a run whose curve is unfinished counts nowhere
                curves.append(curve)
                runs.append(run)
            except Missing:
                unfinished.append(f"{bench.budget.name} {method} seed {seed}")
        if runs:
            rows[method] = {"lr": best, "grid": grid_scores, "source": source, "test": tests, "curves": curves, "runs": runs}
    return rows


COST_ORDER = ["lora", "cola", "xgblora", "control"]  # slowest steps first, so that two queues end together


def prefetch(benches: list[TaskBench], methods: list[str], seeds: list[int], workers: int) -> None:
    """Compute what the tables need, ``workers`` commands at a time, longest first: first the base model's scores and
    the seed-0 runs of every rate grid (with their validation scores), then, at the chosen rates, every seed's run
    with its test score and curve. The tables are then read back from the finished results."""
    benches = sorted(benches, key=lambda bench: -bench.budget.seq)
    first: list[Callable[[], object]] = []
    for bench in benches:
        first.append(bench.base_scores)
        for method in [m for m in COST_ORDER if m in methods and m != "control"]:
            if len(bench.grids[method]) > 1:
                first += [lambda b=bench, m=method, lr=lr: b.grid_point(m, lr, seeds[0]) for lr in bench.grids[method]]
    run_side_by_side(first, workers)
    then: list[Callable[[], object]] = []
    for bench in benches:
        rates = chosen_rates(bench, methods, [])
        for seed in seeds:
            then += [lambda b=bench, m=m, lr=rates[m][0], s=seed: b.finish(m, lr, s) for m in COST_ORDER if m in rates]
    run_side_by_side(then, workers)


# the per-step configuration benchmarks/tradeoff.py times for each method (the control steps like xgblora)
TIMED_AS = {"xgblora": "xgblora k=4", "control": "xgblora k=4", "cola": "cola", "lora": "lora"}


def step_cost(work: Path) -> dict[str, float]:
    """Each method's step time over lora's, measured in one invocation by benchmarks/tradeoff.py (interleaved
    rounds, so unlike the runs' own medians not a measure of the load they met); empty before it has run."""
    times_file = step_times_file(work)
    if not times_file.is_file():
        return {}
    times = {name: statistics.median(values) for name, values in json.loads(times_file.read_text()).items()}
    return {method: times[config] / times["lora"] for method, config in TIMED_AS.items() if config in times and "lora" in times}


def answer_share(folder: Path, task: str) -> tuple[str, float] | None:
    """(the task's first answer label, the % of test answers that gave it) from ``folder/test_acc.json``; None for a
    result written before eval recorded its answer shares."""
    result = json.loads((folder / "test_acc.json").read_text())["tasks"][task]
    if "predicted" not in result:
        return None
    label = sorted(result["gold"])[0]
    return label, 100 * result["predicted"].get(label, 0.0)


def shares_cell(folders: list[Path], task: str) -> str:
    """``false 100%, 11%, 94%``: the share of test answers giving the first label, per run ("?" where not recorded)."""
    shares = [answer_share(folder, task) for folder in folders]
    known = [share for share in shares if share]
    if not known:
        return "-"
    return f"`{known[0][0]}` " + ", ".join(f"{share[1]:.0f}%" if share else "?" for share in shares)


def task_table(task: str, base: tuple[float, float], base_dir: Path, rows: dict[str, dict]) -> str:
    lines = [f"**{task.upper()}** (test = GLUE dev; validation = held-out training records)", "",
             "| model | learning rate (validation accuracy by rate) | validation acc. | test accuracy | test answers giving the first label, by seed "
             "| s per step (the run's median, load-dependent) | trainable params |",
             "|---|---|---|---|---|---|---|",
             f"| base (untouched) | - | {base[0]:.1f} | {base[1]:.1f} | {shares_cell([base_dir], task)} | - | 0 |"]
    for method, row in rows.items():
        plan = row["runs"][0]["plan"]
        grid = ", ".join(f"{lr:g}: {acc:.1f}" for lr, acc in sorted(row["grid"].items())) or row["source"]
        val = f"{row['grid'][row['lr']]:.1f}" if row["grid"] else "-"
        label = f"{method} (r={plan['rank']}, k={plan['layers_per_booster']}, T={plan['num_boosters']})"
        params = f"{row['runs'][0]['trainable_per_booster']:,}/booster"
        shares = shares_cell([run["dir"] for run in row["runs"]], task)
        lines.append(f"| {label} | **{row['lr']:g}** ({grid}) | {val} | **{spread(row['test'])}** (n={len(row['test'])}) "
                     f"| {shares} | {spread([r['step_s'] for r in row['runs']], 2)} | {params} |")
    return "\n".join(lines)


def run_cost(rows: dict[str, dict]) -> dict[str, float]:
    """Each method's mean step time over lora's, from the runs' own medians (empty without lora's runs): a fair
    ratio when the runs met the same load, as ``--jobs`` runs do, side by side from one queue."""
    means = {method: statistics.mean(run["step_s"] for run in row["runs"]) for method, row in rows.items()}
    return {method: mean / means["lora"] for method, mean in means.items()} if "lora" in means else {}


def curve_table(rows: dict[str, dict], cost: dict[str, float], source: str = "same run") -> str:
    steps = [p[0] for p in next(iter(rows.values()))["curves"][0]] if rows else []
    lines = ["| method | " + " | ".join(f"step {s}" for s in steps) + f" | step time vs lora ({source}) |",
             "|---|" + "---|" * (len(steps) + 1)]
    for method, row in rows.items():
        cells = [spread([c[i][2] for c in row["curves"]]) for i in range(len(steps))]
        lines.append(f"| {method} | " + " | ".join(cells) + (f" | {cost[method]:.2f}x |" if method in cost else " | - |"))
    return "\n".join(lines)


def plot_curves(results: dict[str, dict], costs: dict[str, dict[str, float]], out: Path) -> None:
    """Test accuracy against steps and against training time in lora steps (steps x the method's same-run step
    time over lora's), one panel pair per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(results), 2, figsize=(11, 3.6 * len(results)), squeeze=False)
    for row_axes, (task, rows) in zip(axes, results.items()):
        for method, row in rows.items():
            for column, scale, label in ((0, 1.0, "optimizer step"), (1, costs[task].get(method), "training time in lora steps (step-time ratio)")):
                if scale is None:
                    continue
                xs = [scale * c[0] for c in row["curves"][0]]
                ys = [statistics.mean(c[i][2] for c in row["curves"]) for i in range(len(row["curves"][0]))]
                row_axes[column].plot(xs, ys, marker="o", label=method)
                row_axes[column].set(xlabel=label, ylabel=f"{task} test accuracy (%)")
        row_axes[0].legend()
    save_figure(figure, out)


def main() -> None:
    args = parse_args()
    if args.report_only:
        require_runs(args.work, args.doc)
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    runner = Runner(args.report_only, max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None)
    started = time.perf_counter()
    dtype = chosen_dtype(args.dtype)
    rates, extra = DEFAULT_RATES if args.rates == "defaults" else GRIDS, None if dtype == "float32" else {"dtype": dtype}
    benches = {task: TaskBench(args, runner, BUDGETS[task], rates, extra) for task in args.tasks}
    if not args.report_only:
        prefetch(list(benches.values()), args.methods, args.seeds, args.jobs)
    sections, results, unfinished, loss_runs = [], {}, [], []
    timed = step_cost(args.work) if dtype == "float32" else {}  # bench_tradeoff.py times float32 steps
    costs: dict[str, dict[str, float]] = {}
    for task, bench in benches.items():
        base_dir = args.work / task / "base"
        try:
            base = bench.base_scores()
        except Missing:
            unfinished.append(f"{task} base")
            continue
        rows = method_rows(bench, args.methods, unfinished)
        results[task] = rows
        costs[task] = timed or run_cost(rows)
        loss_runs += [str(row["runs"][0]["dir"]) for row in rows.values()]
        budget = BUDGETS[task]
        sections.append(f"{task_table(task, base, base_dir, rows)}\n\nTest accuracy against steps ({CURVE_LIMITS[task]} seeded test "
                        f"questions per point, mean ± sd over seeds; budget {budget.steps} steps x batch {budget.batch}, "
                        f"at most {budget.seq} tokens, {2 * budget.train} training / {2 * budget.val} validation records):"
                        f"\n\n{curve_table(rows, costs[task], 'same run' if timed else 'these runs') if rows else '(no finished run yet)'}")
    if args.report_only and unfinished:  # a table that shows less than the one in the doc is never written
        raise SystemExit(f"not finished in {args.work}: {', '.join(unfinished[:4])}{' ...' if len(unfinished) > 4 else ''}"
                         f" ({len(unfinished)} in all); {args.doc} is left as it is. --report-only rewrites only complete "
                         "tables: measure them first (the same command without --report-only)")
    name, start, end = outputs(args.rates)
    plot, loss_plot = args.doc.parent / f"{name}_curves.png", args.doc.parent / f"{name}_loss.png"
    if results and any(results.values()):
        plot_curves({task: rows for task, rows in results.items() if rows}, costs, plot)
    if loss_runs and not args.report_only:
        runner.cli("report", *loss_runs, "--out", str(loss_plot))
    command = "python -m benchmarks quality " + shlex.join(sys.argv[1:])
    work = args.work.relative_to(ROOT) if args.work.is_relative_to(ROOT) else args.work
    body = (f"Command: `{command.strip()}` ({time.perf_counter() - started:.0f} s for this invocation; finished runs in "
            f"`{work}` are reused). Runs in {dtype} (the base model is scored as shipped, float32), {args.jobs} side by "
            f"side. Accuracy in %, label scoring (`xgblora eval`'s default); test accuracy "
            f"mean ± standard deviation over seeds {' '.join(map(str, args.seeds))}.\n\n"
            + (f"Not finished when this was written: {', '.join(unfinished)}.\n\n" if unfinished else "")
            + "\n\n".join(sections)
            + f"\n\n![test accuracy against steps and seconds]({plot.name})\n\n![training loss, seed 0]({loss_plot.name})")
    write_doc(args.doc, body, start, end)
    (args.work / "summary.json").write_text(json.dumps(
        {task: {m: {k: v for k, v in row.items() if k != "runs"} for m, row in rows.items()} for task, rows in results.items()},
        indent=2, default=str))
    print(body)


if __name__ == "__main__":
    main()
