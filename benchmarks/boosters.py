"""Boosters that learn: each booster mechanism alone and in combination, against the xgblora preset, the lora
preset and the never-merged control, on GLUE SST-2 and RTE (issue "Boosters that learn").

Protocol, as ``benchmarks.quality`` measures the presets: per task, class-balanced training and validation records
cut from GLUE's *training* TSV (validation chooses, never test); every run through ``xgblora train`` with the
task's budget (batch 8, at most 128 / 256 tokens) for ``--steps`` optimizer steps, warmup a tenth of them, the base
in bf16 where the CPU has bf16 arithmetic; each variant is the xgblora preset (rank 1, k = 4, kappa = 10, its
shipped rate) with the recipe keys the variant names. Every run is scored on validation; the runs of
``--test-variants`` also on the test split (GLUE dev), reported only.

Results are data: one record per run (task, steps, variant, seed, keys, rate, validation and test accuracy and
answer shares, median step time) in ``--results`` (JSON, committed); ``--report-only`` renders the tables into
``--doc`` from that file alone, so they regenerate byte for byte. Finished runs and scores in ``--work`` are reused.

    python -m benchmarks boosters [--tasks sst2 rte] [--steps 100] [--seeds 0 1 2] [--variants preset gradinit ...]
        [--test-variants preset lora control] [--jobs 2] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
from dataclasses import replace
from pathlib import Path

from benchmarks.lib import (
    GLUE_DIR,
    OLD_KEYS,
    OLD_RATES,
    ROOT,
    Runner,
    TaskBudget,
    chosen_dtype,
    cut_glue,
    run_side_by_side,
    train_run,
    write_doc,
    write_records,
)
from benchmarks.quality import BUDGETS  # the quality benchmark's data cuts and budgets
from xgblora_cli.common.fsutil import atomic_write_text, held_lock
from xgblora_cli.evaluation.tasks.glue import GLUE

VARIANTS: dict[str, tuple[str, str, float | None, dict]] = {
    # name: (label, method, learning rate (None: the method's shipped one), recipe keys)
    "preset": ("old xgblora preset (random V)", "xgblora", None, {}),
    "lr3e-3": ("the old preset at rate 3e-3 (random V)", "xgblora", 3e-3, {}),
    "gradinit": ("V from the gradient", "xgblora", None, {"booster_init": "gradient"}),
    "gradinit_lr3e-3": ("V from the gradient, rate 3e-3", "xgblora", 3e-3, {"booster_init": "gradient"}),
    "gradblocks": ("blocks by gradient norm", "xgblora", None, {"block_schedule": "gradient"}),
    "gradsample": ("blocks sampled by gradient norm", "xgblora", None, {"block_schedule": "gradient_sample"}),
    "uv4": ("U's rate 4x V's", "xgblora", None, {"train.u_lr_ratio": 4}),
    "shrink05": ("shrinkage 0.5", "xgblora", None, {"shrinkage": 0.5}),
    "search": ("merge line search", "xgblora", None, {"merge_search_batches": 1}),
    "gradinit_lr3e-3_search": ("V from the gradient, rate 3e-3, merge line search", "xgblora", 3e-3,
                               {"booster_init": "gradient", "merge_search_batches": 1}),
    "gradinit_uv4_lr3e-3": ("V from the gradient, U's rate 4x V's, rate 3e-3", "xgblora", 3e-3,
                            {"booster_init": "gradient", "train.u_lr_ratio": 4}),
    "gradinit_uv10_lr1e-3": ("V from the gradient, U's rate 10x V's, rate 1e-3", "xgblora", 1e-3,
                             {"booster_init": "gradient", "train.u_lr_ratio": 10}),
    "gradinit_gradblocks_lr3e-3": ("V from the gradient, blocks by gradient norm, rate 3e-3", "xgblora", 3e-3,
                                   {"booster_init": "gradient", "block_schedule": "gradient"}),
    "gradinit_gradblocks": ("V from the gradient, blocks by gradient norm", "xgblora", None,
                            {"booster_init": "gradient", "block_schedule": "gradient"}),
    "gradinit_lr1.5e-3": ("V from the gradient, rate 1.5e-3", "xgblora", 1.5e-3, {"booster_init": "gradient"}),
    "gradinit_k8_lr3e-3": ("V from the gradient, 8 blocks a booster, rate 3e-3", "xgblora", 3e-3,
                           {"booster_init": "gradient", "layers_per_booster": 8}),
    "gradinit_kappa5_lr3e-3": ("V from the gradient, kappa 5, rate 3e-3", "xgblora", 3e-3,
                               {"booster_init": "gradient", "steps_per_booster": 5}),
    "gradinit_r2_lr3e-3": ("V from the gradient, rank 2, rate 3e-3", "xgblora", 3e-3,
                           {"booster_init": "gradient", "rank": 2}),
    "gradinit_r2_rw3_lr3e-3": ("V from the gradient, rank 2, re-warmup over each booster's first 3 steps, rate 3e-3",
                               "xgblora", 3e-3, {"booster_init": "gradient", "rank": 2, "train.rewarmup_steps": 3}),
    "gradinit_r2_rw5_lr3e-3": ("V from the gradient, rank 2, re-warmup over each booster's first 5 steps, rate 3e-3",
                               "xgblora", 3e-3, {"booster_init": "gradient", "rank": 2, "train.rewarmup_steps": 5}),
    "gradinit_r2_rw3_kappa5_lr3e-3": ("V from the gradient, rank 2, re-warmup 3, kappa 5, rate 3e-3", "xgblora", 3e-3,
                                      {"booster_init": "gradient", "rank": 2, "train.rewarmup_steps": 3,
                                       "steps_per_booster": 5}),
    "gradinit_r2_rw5_avg5_lr3e-3": ("the preset (rank 2, re-warmup 5, V from the gradient, rate 3e-3) ending on the mean "
                                    "of its last 5 booster ends", "xgblora", 3e-3,
                                    {"booster_init": "gradient", "rank": 2, "train.rewarmup_steps": 5, "average_last": 5}),
    "gradinit_rw5_lr3e-3": ("V from the gradient, rank 1, re-warmup 5, rate 3e-3", "xgblora", 3e-3,
                            {"booster_init": "gradient", "train.rewarmup_steps": 5}),
    "lora": ("lora preset", "lora", None, {}),
    "control": ("one never-merged rank-1 booster", "control", None, {}),
    "control_gradinit_r2_rw5_lr3e-3": ("one never-merged booster with the preset's settings (rank 2, V from the gradient, "
                                       "re-warmup 5, rate 3e-3)", "control", 3e-3,
                                       {"booster_init": "gradient", "rank": 2, "train.rewarmup_steps": 5}),
}
START, END = "<!-- bench_boosters:start -->", "<!-- bench_boosters:end -->"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks boosters", description=__doc__.split("\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sst2"], choices=list(BUDGETS))
    p.add_argument("--steps", type=int, nargs="+", default=[100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), help=f"of: {', '.join(VARIANTS)}")
    p.add_argument("--test-variants", nargs="*", default=[], help="variants also scored on the test split")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--glue", type=Path, default=GLUE_DIR)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_boosters")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "boosters.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "boosters.md")
    p.add_argument("--report-only", action="store_true", help="render the tables from --results; run nothing")
    args = p.parse_args(argv)
    unknown = [v for v in args.variants + args.test_variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    return args


# The study's baseline, held fixed whatever the shipped presets become: each method's rate and init as they were
# before it (the control: xgblora's), so that a recorded run and a rerun agree.
BASE_RATES = {**OLD_RATES, "control": OLD_RATES["xgblora"]}
BASE_KEYS = {"xgblora": OLD_KEYS["xgblora"], "control": OLD_KEYS["xgblora"], "lora": {}}


def rate(variant: str) -> float:
    """The variant's learning rate: its own, or its method's baseline one."""
    _, method, lr, _ = VARIANTS[variant]
    return lr if lr is not None else BASE_RATES[method]


def score(runner: Runner, run_dir: Path, task: str, data: Path, out: Path) -> dict:
    """``xgblora eval`` of a run on ``data`` (computed once into ``out``): accuracy (%) and answer shares."""
    if not out.is_file():
        runner.cli("eval", str(run_dir), "--task", task, "--data", str(data), "--scoring", "label", "--output", str(out))
    result = next(iter(json.loads(out.read_text())["tasks"].values()))
    return {"acc": round(100 * result["accuracy"], 2), "shares": {k: round(v, 4) for k, v in result.get("predicted", {}).items()}}


class Study:
    """Runs (or reuses) and scores every (task, steps, variant, seed), keeping one record per run."""

    def __init__(self, args: argparse.Namespace, runner: Runner) -> None:
        self.args, self.runner = args, runner
        self.dtype = chosen_dtype(args.dtype)
        self.data: dict[str, dict[str, Path]] = {}
        for task in args.tasks:
            train, val = cut_glue(args.glue, BUDGETS[task])
            files = {"train": args.work / task / "train.jsonl", "val": args.work / task / "val.jsonl",
                     "test": args.glue / GLUE[task].folder / "dev.tsv"}
            write_records(files["train"], task, train)
            write_records(files["val"], task, val)
            self.data[task] = files

    def measure(self, task: str, steps: int, variant: str, seed: int) -> dict:
        """Train and score one run; its record."""
        label, method, _, keys = VARIANTS[variant]
        budget: TaskBudget = replace(BUDGETS[task], steps=steps)
        extra = {**({} if self.dtype == "float32" else {"dtype": self.dtype}), **keys}
        run = train_run(self.runner, self.args.work / f"steps{steps}", budget, self.data[task]["train"], method,
                        rate(variant), seed, extra, fixed=BASE_KEYS[method])
        folder = run["dir"]
        record = {"task": task, "steps": steps, "variant": variant, "seed": seed, "method": method,
                  "lr": rate(variant), "keys": keys, "dtype": self.dtype, "step_s": round(run["step_s"], 4),
                  "val": score(self.runner, folder, "choice", self.data[task]["val"], folder / "val_acc.json")}
        if variant in self.args.test_variants:
            record["test"] = score(self.runner, folder, task, self.data[task]["test"], folder / "test_acc.json")
        return record


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text())["runs"] if path.is_file() else []


def key(record: dict) -> tuple:
    return record["task"], record["steps"], record["variant"], record["seed"]


def save_results(path: Path, records: list[dict]) -> None:
    """Merge ``records`` into the file (a record replaces the one with the same task, steps, variant and seed),
    under a lock on the file, so that invocations side by side never lose each other's records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with held_lock(path.with_suffix(".lock")):
        kept = {key(r): r for r in load_results(path)}
        kept.update({key(r): r for r in records})
        ordered = sorted(kept.values(), key=lambda r: (r["task"], r["steps"], list(VARIANTS).index(r["variant"])
                                                        if r["variant"] in VARIANTS else 99, r["variant"], r["seed"]))
        atomic_write_text(path, json.dumps({"runs": ordered}, indent=1) + "\n")


def spread(values: list[float]) -> str:
    """``mean ± sd`` with one decimal (the mean alone for one value)."""
    mean = statistics.mean(values)
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def lean(records: list[dict], part: str) -> str:
    """The largest share any one answer took, per seed: a run near 100% learned a lean, not the task."""
    return ", ".join(f"{100 * max(r[part]['shares'].values()):.0f}%" if r[part]["shares"] else "?" for r in records)


def render(records: list[dict]) -> str:
    """The markdown tables of ``records``: one per task and budget, a row per variant (validation, test)."""
    sections = []
    for task, steps in sorted({(r["task"], r["steps"]) for r in records}, key=lambda ts: (ts[0] != "sst2", ts)):
        chosen = [r for r in records if (r["task"], r["steps"]) == (task, steps)]
        preset_s = [r["step_s"] for r in chosen if r["variant"] == "preset"]
        lines = [f"**{task.upper()}, {steps} steps** (validation: held-out training records; test: GLUE dev, reported only)", "",
                 "| variant | recipe keys | rate | validation by seed | validation | largest answer share (val) | test | step time vs preset |",
                 "|---|---|---|---|---|---|---|---|"]
        for variant in sorted({r["variant"] for r in chosen}, key=lambda v: list(VARIANTS).index(v) if v in VARIANTS else 99):
            rows = sorted((r for r in chosen if r["variant"] == variant), key=lambda r: r["seed"])
            keys = ", ".join(f"{k}: {v}" for k, v in rows[0]["keys"].items()) or "-"
            by_seed = " / ".join(f"{r['val']['acc']:.1f}" for r in rows)
            tests = [r["test"]["acc"] for r in rows if "test" in r]
            test = f"{spread(tests)} ({' / '.join(f'{t:.1f}' for t in tests)})" if tests else "-"
            ratio = (f"{statistics.mean(r['step_s'] for r in rows) / statistics.mean(preset_s):.2f}x" if preset_s else "-")
            label = VARIANTS[variant][0] if variant in VARIANTS else variant
            lines.append(f"| {label} (`{variant}`) | {keys} | {rows[0]['lr']:g} | {by_seed} | **{spread([r['val']['acc'] for r in rows])}** "
                         f"| {lean(rows, 'val')} | {test} | {ratio} |")
        sections.append("\n".join(lines))
    table, winner = rule(records)
    if table:
        sections.append("**The defaults rule** (docs/benchmarks.md, \"Defaults\"): each xgblora variant's mean validation accuracy "
                        "relative to the best variant's, on SST-2 at 100 steps and RTE at 400; the smaller of the two; the highest "
                        f"wins, ties to the preset.\n\n{table}")
    return "\n\n".join(sections)


RULE_BUDGETS = {"sst2": 100, "rte": 400}
"""Where the defaults rule reads each task's validation accuracy: SST-2 at 100 steps, RTE at 400 (where lora learns it)."""


def rule(records: list[dict]) -> tuple[str, str | None]:
    """The defaults rule of docs/benchmarks.md applied to the xgblora variants: per task (RULE_BUDGETS), each
    variant's mean validation accuracy over its seeds relative to the best variant's; a variant's worst-case
    relative accuracy is the smaller over the tasks (only variants measured on both count); the highest wins,
    ties to the preset. Returns the table and the winner (None: no variant measured on both yet)."""
    means: dict[str, dict[str, float]] = {}
    for task, steps in RULE_BUDGETS.items():
        for variant in {r["variant"] for r in records if (r["task"], r["steps"]) == (task, steps)}:
            if VARIANTS.get(variant, ("", "xgblora"))[1] != "xgblora":
                continue
            accs = [r["val"]["acc"] for r in records if (r["task"], r["steps"], r["variant"]) == (task, steps, variant)]
            means.setdefault(variant, {})[task] = statistics.mean(accs)
    both = {v: m for v, m in means.items() if set(m) == set(RULE_BUDGETS)}
    if not both:
        return "", None
    best = {task: max(m[task] for m in both.values()) for task in RULE_BUDGETS}
    worst = {v: min(m[task] / best[task] for task in RULE_BUDGETS) for v, m in both.items()}
    winner = max(sorted(worst, key=lambda v: v != "preset"), key=lambda v: worst[v])
    order = [v for v in VARIANTS if v in both]
    lines = ["| xgblora variant | SST-2 val. (100 steps) | RTE val. (400 steps) | worst relative | |", "|---|---|---|---|---|"]
    for v in order:
        seeds = {task: sum(1 for r in records if (r["task"], r["steps"], r["variant"]) == (task, RULE_BUDGETS[task], v))
                 for task in RULE_BUDGETS}
        cells = " | ".join(f"{both[v][task]:.1f} (n={seeds[task]})" for task in RULE_BUDGETS)
        lines.append(f"| {VARIANTS[v][0]} (`{v}`) | {cells} | {worst[v]:.3f} | {'the rule picks it' if v == winner else ''} |")
    return "\n".join(lines), winner


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.report_only:
        if args.jobs < 1:
            raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
        runner = Runner(threads=1 if args.jobs > 1 else None)
        study = Study(args, runner)
        lock = threading.Lock()

        def job(task: str, steps: int, variant: str, seed: int):
            def measure_and_keep() -> None:
                record = study.measure(task, steps, variant, seed)
                with lock:  # the two queues' records go into one file, one merge at a time
                    save_results(args.results, [record])
            return measure_and_keep

        order = [(t, s, v, seed) for seed in args.seeds for t in sorted(args.tasks, key=lambda t: -BUDGETS[t].seq)
                 for s in sorted(args.steps, reverse=True) for v in args.variants]
        run_side_by_side([job(*item) for item in order], args.jobs)
    records = load_results(args.results)
    if not records:
        raise SystemExit(f"{args.results}: no recorded runs; {args.doc} is left as it is")
    write_doc(args.doc, render(records), START, END)
    print(render(records))
