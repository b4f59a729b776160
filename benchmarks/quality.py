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

from benchmarks import quality_report
from benchmarks.lib import (
    GLUE_DIR,
    ROOT,
    Missing,
    Runner,
    TaskBudget,
    accuracy,
    chosen_dtype,
    cut_glue,
    run_side_by_side,
    step_times_file,
    train_run,
    write_records,
)
from benchmarks.quality_report import RESULTS
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
    p.add_argument("--results", type=Path, default=None, help="the results file (default: benchmarks/results/quality.json, "
                   "quality_grid.json for --rates grid)")
    p.add_argument("--collect", action="store_true", help="build the results file from the finished runs in --work; run nothing")
    p.add_argument("--report-only", action="store_true", help="write the tables and plots from the results file alone; run nothing")
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
    """Per method, as data: chosen rate, validation accuracy by rate, its source, plan, and per seed the test
    accuracy, the share of answers giving the first label, the median step time and the learning curve."""
    rows: dict[str, dict] = {}
    for method, (best, grid_scores, source) in chosen_rates(bench, methods, unfinished).items():
        seeds, plan, trainable = [], None, None
        for seed in bench.args.seeds:
            try:
                run, test, curve = bench.finish(method, best, seed)
            except Missing:
                unfinished.append(f"{bench.budget.name} {method} seed {seed}")
                continue
            plan, trainable = run["plan"], run["trainable_per_booster"]
            seeds.append({"seed": seed, "test": test, "share": answer_share(run["dir"], bench.budget.name),
                          "step_s": run["step_s"], "curve": [list(point) for point in curve], "run": run["dir"].name})
        if seeds:
            rows[method] = {"lr": best, "grid": {f"{lr:g}": acc for lr, acc in sorted(grid_scores.items())}, "source": source,
                            "plan": {k: plan[k] for k in ("rank", "layers_per_booster", "num_boosters")},
                            "trainable": trainable, "seeds": seeds}
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


def answer_share(folder: Path, task: str) -> list | None:
    """[the task's first answer label, the % of test answers that gave it] from ``folder/test_acc.json``; None for a
    result written before eval recorded its answer shares."""
    result = json.loads((folder / "test_acc.json").read_text())["tasks"][task]
    if "predicted" not in result:
        return None
    label = sorted(result["gold"])[0]
    return [label, 100 * result["predicted"].get(label, 0.0)]


def run_cost(rows: dict[str, dict]) -> dict[str, float]:
    """Each method's mean step time over lora's, from the runs' own medians (empty without lora's runs): a fair
    ratio when the runs met the same load, as ``--jobs`` runs do, side by side from one queue."""
    means = {method: statistics.mean(s["step_s"] for s in row["seeds"]) for method, row in rows.items()}
    return {method: mean / means["lora"] for method, mean in means.items()} if "lora" in means else {}


def seed0_losses(rows: dict[str, dict], work: Path, task: str) -> dict[str, list[float]]:
    """The seed-0 runs' training loss per step, by run name (what the loss plot shows)."""
    out = {}
    for row in rows.values():
        first = row["seeds"][0]["run"]
        metrics = work / task / first / "metrics.jsonl"
        if metrics.is_file():
            out[first] = [json.loads(line)["loss"] for line in metrics.read_text().splitlines() if '"loss"' in line]
    return out


def collect(args: argparse.Namespace, benches: dict[str, "TaskBench"], dtype: str, seconds: float) -> dict:
    """Every number the tables and plots show, read from the finished runs in ``args.work`` (nothing is run):
    the results file's content. ``unfinished`` names what was not finished."""
    unfinished: list[str] = []
    tasks, losses = {}, {}
    timed = step_cost(args.work) if dtype == "float32" else {}  # bench_tradeoff times float32 steps
    for task, bench in benches.items():
        try:
            val, test = bench.base_scores()
        except Missing:
            unfinished.append(f"{task} base")
            continue
        rows = method_rows(bench, args.methods, unfinished)
        budget = BUDGETS[task]
        tasks[task] = {"budget": {k: getattr(budget, k) for k in ("steps", "batch", "seq", "train", "val")},
                       "curve_limit": CURVE_LIMITS[task],
                       "base": {"val": val, "test": test, "share": answer_share(args.work / task / "base", task)},
                       "methods": rows, "costs": timed or run_cost(rows), "cost_source": "same run" if timed else "these runs"}
        losses.update(seed0_losses(rows, args.work, task))
    name, _, _ = outputs(args.rates)
    work = args.work.relative_to(ROOT) if args.work.is_relative_to(ROOT) else args.work
    return {"name": name, "command": "python -m benchmarks quality " + shlex.join(sys.argv[1:]), "seconds": seconds,
            "work": str(work), "dtype": dtype, "jobs": args.jobs, "seeds": args.seeds, "unfinished": unfinished,
            "tasks": tasks, "losses": losses}


def main() -> None:
    args = parse_args()
    name, _, _ = outputs(args.rates)
    results_file = args.results or RESULTS / f"{name.removeprefix('bench_')}.json"
    if args.report_only:  # the tables from the results file alone
        if not results_file.is_file():
            raise SystemExit(f"{results_file}: no results file; {args.doc} is left as it is. Measure first (make bench-quality)")
        print(quality_report.write(json.loads(results_file.read_text()), args.doc))
        return
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    runner = Runner(args.collect, max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None)
    started = time.perf_counter()
    dtype = chosen_dtype(args.dtype)
    rates, extra = DEFAULT_RATES if args.rates == "defaults" else GRIDS, None if dtype == "float32" else {"dtype": dtype}
    benches = {task: TaskBench(args, runner, BUDGETS[task], rates, extra) for task in args.tasks}
    if not args.collect:
        prefetch(list(benches.values()), args.methods, args.seeds, args.jobs)
    results = collect(args, benches, dtype, time.perf_counter() - started)
    if args.collect and results["unfinished"]:  # a table that shows less than the one recorded is never written
        unfinished = results["unfinished"]
        raise SystemExit(f"not finished in {args.work}: {', '.join(unfinished[:4])}{' ...' if len(unfinished) > 4 else ''}"
                         f" ({len(unfinished)} in all); {results_file} is left as it is")
    results_file.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(results, indent=1) + "\n")
    print(quality_report.write(results, args.doc))


if __name__ == "__main__":
    main()
