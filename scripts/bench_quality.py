"""Accuracy under one budget: xgblora vs cola vs lora (and the untouched base) on real commonsense data.

Protocol (every step goes through the `xgblora` command line, like a user would):
  1. Cut a training mix and a validation split from the *training* files of every commonsense task found
     under ``--data`` (default ``../shared/data/commonsense``); the test files are never used for choices.
  2. For each method, train with every learning rate of its grid (seed 0) and keep the one with the highest
     validation accuracy (``xgblora eval RUN --task T --data val_tasks --scoring label`` on the held-out
     training questions, mean over tasks; ties go to the lower validation loss, which is reported too).
     Validation loss alone is not used: it is mostly the answer format, and a rate can lower it while the
     answers get worse (seen here: xgblora at 3e-2).
  3. Train the chosen learning rate with the other seeds (seed 0 is reused from step 2).
  4. Score the base model and every final run on the test files (``xgblora eval --limit N``, each ``--scoring``).
  5. Write the table between the bench_quality markers of ``docs/benchmarks.md`` and a loss-curve comparison
     PNG (``xgblora report``).

Runs already complete in ``--work`` are reused, so an interrupted benchmark continues where it stopped;
``--report-only`` writes the table from whatever is finished, running nothing.

    .venv/bin/python scripts/bench_quality.py [--steps 80] [--batch 4] [--seq 192] [--seeds 0 1] [--limit 100]
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from xgblora_cli.recipe import apply_override
from xgblora_cli.tasks.commonsense import FOLDERS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LRS = {"xgblora": [1e-3, 3e-3, 1e-2, 3e-2], "cola": [3e-4, 1e-3, 3e-3], "lora": [3e-4, 1e-3, 3e-3]}
START, END = "<!-- bench_quality:start -->", "<!-- bench_quality:end -->"


def add_budget_args(p: argparse.ArgumentParser) -> None:
    """The model, data, work folder, budget and output flags this script shares with bench_ablation.py."""
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "commonsense")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_quality")
    p.add_argument("--steps", type=int, default=80, help="optimizer steps per run (the budget)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=192)
    p.add_argument("--train-per-task", type=int, default=400)
    p.add_argument("--val-per-task", type=int, default=40,
                   help="held-out training questions per task, cut before the training slice")
    p.add_argument("--val-extra-per-task", type=int, default=160,
                   help="more held-out questions per task, taken after the training slice (so they do not change "
                        "what is trained on), for validation accuracy only")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_budget_args(p)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_LRS))
    p.add_argument("--lrs", nargs="*", default=[], metavar="METHOD=LR,LR", help="override a method's grid")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--limit", type=int, default=100, help="test questions per task (seeded subset)")
    p.add_argument("--scoring", nargs="+", default=["loglik", "label"], help="xgblora eval --scoring modes to report")
    p.add_argument("--report-only", action="store_true", help="write the table from finished results only; run nothing")
    return p.parse_args()


class Missing(Exception):
    """``--report-only``: a result the table needs has not been computed yet."""


REPORT_ONLY = False  # set by --report-only: build the table from finished results, run nothing


def cli(*args: str) -> None:
    if REPORT_ONLY:
        raise Missing(shlex.join(args))
    command = [sys.executable, "-m", "xgblora_cli", *args]
    print("$", shlex.join(["xgblora", *args]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def cut_splits(data: Path, work: Path, per_task: int, val_per_task: int, val_extra: int = 0) -> list[str]:
    """train.jsonl / val.jsonl in ``work`` from each task's training file; returns the tasks found.

    Each task's shuffled records are cut as ``[val_per_task | per_task (training) | val_extra]``: val.jsonl
    (validation loss) holds the first part, ``val_tasks/<Folder>/test.json`` (validation accuracy) the first and
    the last, so growing ``val_extra`` leaves the training mix as it was.
    """
    tasks, train, val = [], [], []
    work.mkdir(parents=True, exist_ok=True)
    for task, folder in FOLDERS.items():
        source = data / folder / "train.json"
        if not source.is_file():
            continue
        records = json.loads(source.read_text())
        random.Random(1234).shuffle(records)
        val += records[:val_per_task]
        end = val_per_task + per_task
        train += records[val_per_task:end]
        tasks.append(task)
        by_task = work / "val_tasks" / folder  # validation questions, per task, in the test-file layout
        by_task.mkdir(parents=True, exist_ok=True)
        (by_task / "test.json").write_text(json.dumps(records[:val_per_task] + records[end : end + val_extra]))
    if not tasks:
        sys.exit(f"--data {data}: no <task>/train.json in the LLM-Adapters layout")
    random.Random(1234).shuffle(train)
    for name, rows in (("train.jsonl", train), ("val.jsonl", val)):
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tasks


def train_run(args: argparse.Namespace, method: str, lr: float, seed: int, extra: dict | None = None) -> dict:
    """Train (or reuse) one run; returns its directory, wall time and trainable parameters.

    ``extra`` adds recipe keys (``train.``-prefixed for the train block); they are part of the run's name.
    """
    tag = "".join(f"_{key.removeprefix('train.')}{value}" for key, value in (extra or {}).items())
    out = args.work / f"{method}_lr{lr:g}_s{seed}{tag}"
    recipe = {
        "model": args.model, "dataset": str(args.work / "train.jsonl"), "output_dir": str(out), "method": method,
        "seed": seed, "train": {"max_steps": args.steps, "batch_size": args.batch, "learning_rate": lr,
                                "warmup_steps": max(1, args.steps // 10), "max_seq_len": args.seq, "checkpoint_every": 20},
    }
    for key, value in (extra or {}).items():
        apply_override(recipe, f"{key}={value}")
    info_file = out / "run.json"
    done = info_file.is_file() and json.loads(info_file.read_text()).get("status") == "complete"
    timing = out / "bench_wall_s.txt"
    if not done or not timing.is_file():
        recipe_file = args.work / f"{out.name}.yaml"
        recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
        started = time.perf_counter()
        cli("train", str(recipe_file), "--no-progress", "--overwrite")
        timing.write_text(f"{time.perf_counter() - started:.1f}\n")
    info = json.loads(info_file.read_text())
    trainable = info["trainable_per_booster"]
    return {"dir": out, "wall_s": float(timing.read_text()), "trainable_per_booster": trainable,
            "trainable_total": trainable * info["plan"]["num_boosters"], "plan": info["plan"]}


def val_loss(args: argparse.Namespace, run: Path) -> float:
    result = run / "val.json"
    if not result.is_file():
        cli("eval", str(run), "--task", "perplexity", "--data", str(args.work / "val.jsonl"), "--output", str(result))
    return json.loads(result.read_text())["tasks"]["perplexity"]["mean_nll"]


def task_accuracies(target: str, tasks: list[str], data: Path, scoring: str, result: Path, *flags: str) -> dict[str, float]:
    """Accuracy (%) by task of ``xgblora eval TARGET`` on ``data``, computed once into ``result``."""
    if not result.is_file():
        task_flags = [flag for task in tasks for flag in ("--task", task)]
        cli("eval", target, *task_flags, "--data", str(data), *flags, "--scoring", scoring, "--output", str(result))
    return {task: 100 * r["accuracy"] for task, r in json.loads(result.read_text())["tasks"].items()}


def val_accuracy(args: argparse.Namespace, target: str, folder: Path, tasks: list[str]) -> float:
    """Mean accuracy (%) over tasks on the validation questions, ``label`` scoring: the answer in the format
    the fine-tune is trained on (the LLM-Adapters protocol's target), so it measures what training teaches.
    The result file is named by the questions per task, so a larger split is scored afresh."""
    result = folder / f"val_label_{val_questions(args)}.json"
    by_task = task_accuracies(target, tasks, args.work / "val_tasks", "label", result)
    return statistics.mean(by_task.values())


def val_questions(args: argparse.Namespace) -> int:
    """Validation-accuracy questions per task (fewer where a training file runs out)."""
    return args.val_per_task + args.val_extra_per_task


def validate(args: argparse.Namespace, run: Path, tasks: list[str]) -> tuple[float, float]:
    """(validation accuracy %, validation loss) of one run."""
    return val_accuracy(args, str(run), run, tasks), val_loss(args, run)


def choose(args: argparse.Namespace, runs: dict[float, dict], tasks: list[str]) -> tuple[float, str]:
    """The learning rate with the best validation accuracy (then loss), and a text of every rate's numbers."""
    scores = {lr: validate(args, run["dir"], tasks) for lr, run in runs.items()}
    best = max(scores, key=lambda lr: (scores[lr][0], -scores[lr][1]))
    print(f"validation (accuracy %, loss) by lr {scores} -> {best:g}", flush=True)
    return best, ", ".join(f"{lr:g}: {acc:.1f}% / {loss:.3f}" for lr, (acc, loss) in scores.items())


def test_scores(args: argparse.Namespace, target: str, tasks: list[str], folder: Path) -> dict[str, dict[str, float]]:
    """Test accuracy (%) by scoring mode and task."""
    folder.mkdir(parents=True, exist_ok=True)
    return {scoring: task_accuracies(target, tasks, args.data, scoring, folder / f"test_{scoring}.json",
                                     "--limit", str(args.limit))
            for scoring in args.scoring}


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.1f}" if len(values) < 2 else f"{mean:.1f} ± {statistics.stdev(values):.1f}"


def table(rows: dict[str, dict], tasks: list[str], scoring: str) -> str:
    head = "| model | lr (val accuracy / val loss) | " + " | ".join(tasks) + " | avg | train wall (s) | trainable params |"
    lines = [head, "|" + "---|" * (len(tasks) + 5)]
    for name, row in rows.items():
        runs = [scores[scoring] for scores in row["scores"]]
        cells = [spread([r[t] for r in runs]) for t in tasks]
        avg = spread([statistics.mean(r[t] for t in tasks) for r in runs])
        lines.append(f"| {name} | {row['lr']} | " + " | ".join(cells) + f" | **{avg}** | {row['wall']} | {row['params']} |")
    return "\n".join(lines)


def write_doc(doc: Path, body: str, start: str = START, end: str = END) -> None:
    """Replace what lies between the ``start`` and ``end`` markers of ``doc`` (appended when missing)."""
    text = doc.read_text() if doc.is_file() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(f"{before}{start}\n{body}\n{end}{after}")


def main() -> None:
    global REPORT_ONLY
    args = parse_args()
    REPORT_ONLY = args.report_only
    grids = dict(DEFAULT_LRS)
    for item in args.lrs:
        method, values = item.split("=", 1)
        grids[method] = [float(v) for v in values.split(",")]
    started = time.perf_counter()
    tasks = cut_splits(args.data, args.work, args.train_per_task, args.val_per_task, args.val_extra_per_task)
    base_val = val_accuracy(args, args.model, args.work / "base", tasks)
    rows: dict[str, dict] = {"base (untouched)": {"lr": f"- ({base_val:.1f}% / -)", "wall": "-", "params": "0",
                                                 "scores": [test_scores(args, args.model, tasks, args.work / "base")]}}
    chosen_runs, unfinished = [], []
    for method in args.methods:
        try:
            tried = {lr: train_run(args, method, lr, args.seeds[0]) for lr in grids[method]}
            best, val_text = choose(args, tried, tasks)
        except Missing:
            unfinished.append(f"{method} (learning-rate grid)")
            continue
        runs, scores = [], []
        for seed in args.seeds:
            try:
                run = tried[best] if seed == args.seeds[0] else train_run(args, method, best, seed)
                scores.append(test_scores(args, str(run["dir"]), tasks, run["dir"]))
                runs.append(run)
            except Missing:
                unfinished.append(f"{method} seed {seed}")
        if not runs:
            continue
        chosen_runs.append(runs[0]["dir"])
        plan = runs[0]["plan"]
        rows[f"{method} (r={plan['rank']}, k={plan['layers_per_booster']}, T={plan['num_boosters']})"] = {
            "lr": f"**{best:g}** ({val_text})", "scores": scores,
            "wall": spread([r["wall_s"] for r in runs]),
            "params": f"{runs[0]['trainable_per_booster']:,} per booster, {runs[0]['trainable_total']:,} in all"}
    plot = args.doc.parent / "bench_quality_loss.png"
    if not REPORT_ONLY:
        cli("report", *map(str, chosen_runs), "--out", str(plot))
    command = "python scripts/bench_quality.py " + shlex.join(sys.argv[1:])
    where = args.work.relative_to(ROOT) if args.work.is_relative_to(ROOT) else args.work
    body = (f"Command: `{command.strip()}` ({time.perf_counter() - started:.0f} s for this invocation; finished runs "
            f"in `{where}` are reused; train wall is each run's own time, taken under varying load: not a speed comparison)\n\n"
            f"Budget: {args.steps} optimizer steps x batch {args.batch} x at most {args.seq} tokens, "
            f"{args.train_per_task} training and {val_questions(args)} validation records per task from the training files; "
            f"seeds {' '.join(map(str, args.seeds))}; test accuracy (%) on a seeded subset of {args.limit} "
            f"questions per test file, mean ± standard deviation over seeds. Learning rate per method: the best "
            f"validation accuracy (label scoring, {val_questions(args)} held-out training questions per task; validation "
            f"loss, the tie-break, on the first {args.val_per_task} of them) over the grid.\n\n"
            + (f"Not finished when this table was written: {', '.join(unfinished)}.\n\n" if unfinished else "")
            + "".join(f"Scoring `{s}`:\n\n{table(rows, tasks, s)}\n\n" for s in args.scoring)
            + f"![training loss of the seed-{args.seeds[0]} runs]({plot.name})")
    write_doc(args.doc, body)
    print(body)


if __name__ == "__main__":
    main()
