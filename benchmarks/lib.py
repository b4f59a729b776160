"""What the quality benchmarks share: GLUE splits cut from the training files, runs through the `xgblora` command
line (reused when finished, so every benchmark is resumable), their evaluation, and tables in docs/benchmarks.md.

Nothing here chooses a setting on a test split: validation files are cut from GLUE's *training* TSVs, and the
test split is GLUE's dev (its test labels are not public).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import yaml

from xgblora_cli.evaluation.tasks.glue import GLUE, read_tsv, to_record
from xgblora_cli.recipe_file import apply_override

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parent.parent
GLUE_DIR = ROOT.parent / "shared" / "data" / "glue"


@dataclass(frozen=True)
class TaskBudget:
    """One task's data and budget: training/validation records cut from the training TSV, steps, batch, length."""

    name: str
    train: int  # training records per class
    val: int  # validation records per class
    steps: int
    batch: int
    seq: int
    min_words: int = 0  # leave out training-file rows shorter than this (SST-2's phrase fragments)


class Missing(Exception):
    """``--report-only``: a result the table needs has not been computed yet."""


class Runner:
    """Runs `xgblora` commands (or, with ``report_only``, refuses to, raising :class:`Missing`); ``threads``: the
    torch threads of each command (OMP_NUM_THREADS), for commands run side by side; None: torch's default."""

    def __init__(self, report_only: bool = False, threads: int | None = None) -> None:
        self.report_only = report_only
        self.threads = threads

    def cli(self, *args: str) -> None:
        if self.report_only:
            raise Missing(shlex.join(args))
        print("$", shlex.join(["xgblora", *args]), flush=True)
        env = None if self.threads is None else {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        subprocess.run([sys.executable, "-m", "xgblora_cli", *args], check=True, cwd=ROOT, env=env)


BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The bf16-arithmetic flags this CPU reports (empty: bf16 matmuls are emulated and slower than fp32)."""
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in BF16_FLAGS if flag in flags]


def chosen_dtype(asked: str) -> str:
    """``asked``, or for ``auto`` bfloat16 on a CPU with bf16 arithmetic and float32 elsewhere."""
    if asked != "auto":
        return asked
    return "bfloat16" if cpu_bf16_flags() else "float32"


def run_side_by_side(jobs: list[Callable[[], object]], workers: int) -> None:
    """Call every job, ``workers`` at a time; the first failure cancels what has not started and is raised."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def balanced(rows: list[dict], sizes: list[int], rng: random.Random, min_words: int = 0) -> list[list[dict]]:
    """Disjoint parts with ``sizes[i]`` rows of each label, each part shuffled; rows whose ``sentence`` has fewer
    than ``min_words`` words (SST-2's training file is full of phrase fragments) are left out."""
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        if len(row.get("sentence", "").split()) >= min_words:
            by_label.setdefault(str(row["label"]).strip(), []).append(row)
    drawn = {label: rng.sample(found, sum(sizes)) for label, found in sorted(by_label.items())}
    parts, start = [], 0
    for size in sizes:
        part = [row for label in sorted(drawn) for row in drawn[label][start : start + size]]
        rng.shuffle(part)
        parts.append(part)
        start += size
    return parts


def write_records(path: Path, task: str, rows: list[dict]) -> None:
    """GLUE rows as LLM-Adapters training records, one JSON line each; an identical file is left untouched, so
    that two benchmarks started side by side never truncate a file the other's run is reading."""
    text = "".join(json.dumps(to_record(task, row)) + "\n" for row in rows)
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def cut_glue(glue_dir: Path, budget: TaskBudget) -> tuple[list[dict], list[dict]]:
    """(training rows, validation rows) from the task's training TSV: ``budget.train`` and ``budget.val`` per class,
    class-balanced, disjoint, seeded (``random.Random(0)``: the same rows on every call). A missing file stops the
    script with one line naming it and ``--glue``, not a traceback."""
    tsv = glue_dir / GLUE[budget.name].folder / "train.tsv"
    if not tsv.is_file():
        raise SystemExit(f"{tsv}: not found; the benchmarks read GLUE's TSV folders (default {GLUE_DIR}, "
                         "../shared/data/glue beside the repository): pass --glue DIR")
    _, rows = read_tsv(tsv)
    usable = [row for row in rows if isinstance(row, dict) and not isinstance(to_record(budget.name, row), str)]
    train, val = balanced(usable, [budget.train, budget.val], random.Random(0), budget.min_words)
    return train, val


def run_name(method: str, lr: float, seed: int, extra: dict | None = None) -> str:
    tag = "".join(f"_{key.removeprefix('train.')}{value}" for key, value in (extra or {}).items())
    return f"{method}_lr{lr:g}_s{seed}{tag}"


# The presets before the booster study (docs/boosters.md), which the recorded benchmark runs were measured with:
# each method's rate, and the keys that hold xgblora's random V, rank 1 and no re-warmup whatever the shipped
# presets become.
OLD_RATES = {"xgblora": 1e-2, "cola": 1e-3, "lora": 1e-3}
OLD_KEYS = {"xgblora": {"booster_init": "random", "rank": 1, "train.rewarmup_steps": 0}}


def train_run(runner: Runner, work: Path, budget: TaskBudget, data: Path, method: str, lr: float, seed: int,
              extra: dict | None = None, snapshots: int = 4, fixed: dict | None = None) -> dict:
    """Train (or reuse) one run; returns its directory, median step time, plan and trainable parameters per booster.

    ``method`` is a preset, or ``control``: the xgblora preset with one booster for the whole run (the preset's
    rank on the same number of random blocks, never merged), which isolates what boosting adds. ``extra``: more recipe keys,
    part of the run's name. ``fixed``: recipe keys set before ``extra`` but not part of the name (what a benchmark
    holds fixed whatever the shipped presets become). ``snapshots`` evenly spaced states are kept for learning curves. The run's total wall
    time stays in its ``bench_wall_s.txt``, which also marks a run this benchmark finished.
    """
    out = work / budget.name / run_name(method, lr, seed, extra)
    recipe = {
        "model": "smollm2-135m", "dataset": str(data), "output_dir": str(out),
        "method": "xgblora" if method == "control" else method, "seed": seed,
        "train": {"max_steps": budget.steps, "batch_size": budget.batch, "learning_rate": lr, "max_seq_len": budget.seq,
                  "warmup_steps": max(1, budget.steps // 10), "checkpoint_every": 25,
                  "snapshot_every": max(1, budget.steps // snapshots)},
    }
    for key, value in (fixed or {}).items():
        apply_override(recipe, f"{key}={value}")
    if method == "control":  # after ``fixed``: its one booster lasts the run whatever kappa a baseline holds
        recipe["steps_per_booster"] = budget.steps
    for key, value in (extra or {}).items():
        apply_override(recipe, f"{key}={value}")
    info_file, timing = out / "run.json", out / "bench_wall_s.txt"
    if run_status(out) != "complete" or not timing.is_file():
        recipe_file = work / budget.name / f"{out.name}.yaml"
        recipe_file.parent.mkdir(parents=True, exist_ok=True)
        recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
        started = time.perf_counter()
        # a run stopped part-way (a killed study) goes on from its checkpoint; anything else starts afresh
        resume = run_status(out) == "running" and (out / "checkpoint.safetensors").is_file()
        runner.cli("train", str(recipe_file), "--no-progress", "--resume" if resume else "--overwrite")
        timing.write_text(f"{time.perf_counter() - started:.1f}\n")
    info = json.loads(info_file.read_text())
    return {"dir": out, "step_s": step_seconds(out), "plan": info["plan"], "trainable_per_booster": info["trainable_per_booster"]}


def run_status(folder: Path) -> str | None:
    """The ``status`` a run folder's ``run.json`` records (``running``, ``complete``, ...); None without one."""
    info = folder / "run.json"
    return json.loads(info.read_text()).get("status") if info.is_file() else None


def require_runs(work: Path, doc: Path) -> None:
    """Stop with a one-line message, leaving ``doc`` as it is, when ``work`` holds no finished run (a clean clone:
    runs/ is not in git), so that reading back nothing never overwrites a table measured elsewhere."""
    if not any(work.glob("*/*/bench_wall_s.txt")):
        raise SystemExit(f"no finished run in {work} (runs/ is not in git: a clean clone has none); {doc} is left as "
                         "it is. Measure first: the benchmark without --report-only (make bench-quality).")


def step_seconds(run_dir: Path, skip: int = 0) -> float:
    """The median seconds of one optimizer step after the first ``skip`` (warm-up), from the run's own metrics (each step's
    tokens over its tokens/s): robust to a pause or a burst of load that a run's total wall time would absorb."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r["tokens"] / r["tokens_per_s"] for r in rows if "loss" in r and r.get("tokens_per_s")]
    return statistics.median(steps[skip:] or steps)  # a run no longer than ``skip``: all its steps


def timed_steps(runner: Runner, out: Path, data: Path, keys: dict, steps: int, seed: int) -> float:
    """Median seconds of one step after the first two, of a fresh ``xgblora train`` of ``steps`` steps of the SST-2
    budget (batch 8, at most 128 tokens, ``data``'s records) with recipe ``keys`` (``method`` and any more), written
    to ``out``; an xgblora run draws a new booster every 2 steps, so a run covers several block draws."""
    recipe = {"model": "smollm2-135m", "dataset": str(data), "output_dir": str(out), "seed": seed,
              "train": {"max_steps": steps, "batch_size": 8, "learning_rate": 1e-3, "max_seq_len": 128,
                        "warmup_steps": 1, "checkpoint_every": steps}}
    for key, value in keys.items():  # dotted keys (train.x) as on the command line
        apply_override(recipe, f"{key}={value}")
    if keys["method"] == "xgblora":
        recipe["steps_per_booster"] = 2
    recipe_file = out.with_suffix(".yaml")
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    runner.cli("train", str(recipe_file), "--no-progress", "--overwrite")
    return step_seconds(out, skip=2)


def step_times_file(work: Path) -> Path:
    """Where benchmarks/tradeoff.py keeps its same-run step times (per configuration, per round)."""
    return work / "tradeoff" / "step_times.json"


def accuracy(runner: Runner, target: str, task: str, data: Path, result: Path, *flags: str) -> float:
    """Accuracy (%) of ``xgblora eval TARGET --task TASK --data DATA`` (label scoring), computed once into ``result``."""
    if not result.is_file():
        result.parent.mkdir(parents=True, exist_ok=True)
        runner.cli("eval", target, "--task", task, "--data", str(data), "--scoring", "label", *flags, "--output", str(result))
    return 100 * json.loads(result.read_text())["tasks"][task]["accuracy"]


def recorded_accuracy(result: Path) -> float:
    """Accuracy (%) in an ``xgblora eval --output`` file of one task, whichever task it names."""
    return 100 * next(iter(json.loads(result.read_text())["tasks"].values()))["accuracy"]


def spread(values: list[float], digits: int = 1) -> str:
    """``mean ± standard deviation`` (just the mean for one value)."""
    mean = statistics.mean(values)
    return f"{mean:.{digits}f}" if len(values) < 2 else f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def block(text: str, start: str, end: str) -> str:
    """What lies between the ``start`` and ``end`` markers of ``text`` ("" without them)."""
    return text.split(start, 1)[1].split(end, 1)[0] if start in text else ""


def row_cells(line: str) -> list[str]:
    """The stripped cells of one markdown table row (``| a | b |`` -> ``["a", "b"]``; a line without ``|``: itself)."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def write_doc(doc: Path, body: str, start: str, end: str) -> None:
    """Replace what lies between the ``start`` and ``end`` markers of ``doc`` (appended when missing)."""
    text = doc.read_text() if doc.is_file() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(f"{before}{start}\n{body}\n{end}{after}")


def save_figure(figure, out: Path) -> None:
    """Lay out, write (PNG, 110 dpi) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


@dataclass(frozen=True)
class Ratio:
    """A ratio measured over interleaved rounds: its median, quartiles and range, and how many rounds it took."""

    median: float
    low: float
    high: float
    q1: float
    q3: float
    rounds: int

    def text(self, digits: int = 2) -> str:
        """``1.68 (range 1.52-1.80 over 7 rounds)``."""
        return f"{self.median:.{digits}f} (range {self.low:.{digits}f}-{self.high:.{digits}f} over {self.rounds} rounds)"


def spread_known(values: list[float], min_rounds: int, tolerance: float = 0.10) -> bool:
    """Whether per-round ratios ``values`` pin their median: at least ``min_rounds`` of them, and their quartiles
    within ``tolerance`` of the median."""
    if len(values) < max(min_rounds, 2):
        return False
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) <= tolerance * statistics.median(values)


def as_ratio(values: list[float]) -> Ratio:
    """Per-round ratios (at least one) as their median, quartiles and range."""
    q1, _, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0], 0, values[0])
    return Ratio(statistics.median(values), min(values), max(values), q1, q3, len(values))


def interleaved(sides: list, number: int) -> list:
    """``sides`` in the order round ``number`` measures them: as given in even rounds, reversed in odd ones, so that
    neither side always runs first (warm caches, load drift)."""
    return list(sides) if number % 2 == 0 else list(reversed(sides))


def timed(fn: Callable[[], object], device: torch.device | None = None) -> float:
    """Wall seconds of one ``fn()``; on a CUDA ``device`` its queue drained before and after."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        import torch  # here, not at the top: rendering tables needs no torch

        torch.cuda.synchronize(device)
    started = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def ratio_rounds(one_round: Callable[[int], float], min_rounds: int = 5, max_rounds: int = 15,
                 tolerance: float = 0.10) -> Ratio:
    """Repeat ``one_round(r)`` (one interleaved round: both sides measured back to back, returning their ratio)
    until the spread is known (:func:`spread_known`: at least ``min_rounds``, quartiles within ``tolerance`` of the
    median) or ``max_rounds``. Under load a few rounds decide nothing; the median and range of many do."""
    values: list[float] = []
    for number in range(max_rounds):
        values.append(one_round(number))
        if spread_known(values, min_rounds, tolerance):
            break
    return as_ratio(values)
