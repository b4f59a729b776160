"""What each step inside a booster does to the training loss, against lora on the very same batches.

The boosters study's runs of one task, budget and seed draw the same batches in the same order whatever the method
(the data order follows the seed), so the ratio of an xgblora run's training loss to the lora run's at the same step
compares the two models on the same examples. Grouped by a step's position inside its booster (1 = a booster's first
step, before any update of it; 2 = the step after its first update; ...), the geometric mean of that ratio shows
what a booster's updates do: a ratio that jumps from position 1 to 2 is a first update that makes the model worse on
the next batch, which the booster's other steps then repair. Steps of the boosters that start inside the run's
warmup are left out (the first booster learns the answer's format, docs/boosters.md).

Nothing is trained: it reads the ``metrics.jsonl`` of finished study runs (``python -m benchmarks boosters``) from
one or more ``--work`` folders (study clones included) and keeps, per run, the mean log-ratio at each position in
``--results`` (JSON, committed); ``python -m benchmarks render`` rebuilds the table in docs/boosters.md from it.

    python -m benchmarks booster_steps [--work runs/bench_boosters ...] [--variants gradinit_lr3e-3 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from benchmarks.boosters import VARIANTS, load_results, rate, save_results
from benchmarks.lib import ROOT, run_name
from benchmarks.quality import BUDGETS
from xgblora_cli.recipe import PRESETS

START, END = "<!-- booster_steps:start -->", "<!-- booster_steps:end -->"
RESULTS = ROOT / "benchmarks" / "results" / "booster_steps.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks booster_steps", description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, nargs="+", default=[ROOT / "runs" / "bench_boosters"],
                   help="folders holding the boosters study's runs (its --work), searched in order")
    p.add_argument("--tasks", nargs="+", default=["sst2", "rte"], choices=list(BUDGETS))
    p.add_argument("--steps", type=int, nargs="+", default=[100, 400])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=[v for v in VARIANTS if v != "lora"])
    p.add_argument("--dtype", default="bfloat16", help="the dtype the study's runs were named with")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS or v == "lora"]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r} (lora is the reference); known: {', '.join(v for v in VARIANTS if v != 'lora')}")
    return args


def kappa(variant: str) -> int:
    """Steps per booster of a study variant (the control: one booster, read in windows of the preset's kappa)."""
    return int(VARIANTS[variant][3].get("steps_per_booster", PRESETS["xgblora"].steps_per_booster))


def run_folder(works: list[Path], task: str, steps: int, variant: str, seed: int, dtype: str) -> Path | None:
    """The finished study run of (task, steps, variant, seed) in the first of ``works`` that has it, else None."""
    _, method, _, keys = VARIANTS[variant]
    name = run_name(method, rate(variant), seed, {"dtype": dtype, **keys})
    for work in works:
        folder = work / f"steps{steps}" / task / name
        if (folder / "bench_wall_s.txt").is_file() and (folder / "metrics.jsonl").is_file():
            return folder
    return None


def losses(folder: Path) -> dict[int, tuple[float, int]]:
    """``{step: (training loss, tokens)}`` of a run's metrics (steps are 1-based)."""
    rows = (json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip())
    return {r["step"]: (r["loss"], r.get("tokens", 0)) for r in rows if "loss" in r and "step" in r}


def first_counted_step(steps: int, window: int) -> int:
    """The first step of the first booster that starts after the run's warmup (a tenth of the steps, as the study's)."""
    warmup = max(1, steps // 10)
    return window * math.ceil(warmup / window) + 1


def position_log_ratios(run: dict[int, tuple[float, int]], reference: dict[int, tuple[float, int]], window: int,
                        first: int) -> dict[int, list[float]]:
    """``{position: [log(loss / reference loss), ...]}`` over the steps from ``first`` on that both runs logged;
    position 1 is a booster's first step. Raises ValueError where the two saw different batches (token counts)."""
    out: dict[int, list[float]] = {}
    for step in sorted(set(run) & set(reference)):
        if step < first:
            continue
        (loss, tokens), (ref_loss, ref_tokens) = run[step], reference[step]
        if tokens != ref_tokens:
            raise ValueError(f"step {step}: {tokens} tokens against the reference's {ref_tokens}: not the same batch")
        out.setdefault((step - 1) % window + 1, []).append(math.log(loss / ref_loss))
    return out


def measure(args: argparse.Namespace) -> list[dict]:
    """One record per (task, steps, variant, seed) whose run and lora's twin are both found."""
    records = []
    for task in args.tasks:
        for steps in args.steps:
            for seed in args.seeds:
                reference = run_folder(args.work, task, steps, "lora", seed, args.dtype)
                if reference is None:
                    continue
                for variant in args.variants:
                    folder = run_folder(args.work, task, steps, variant, seed, args.dtype)
                    if folder is None:
                        continue
                    window = kappa(variant)
                    first = first_counted_step(steps, window)
                    ratios = position_log_ratios(losses(folder), losses(reference), window, first)
                    records.append({"task": task, "steps": steps, "variant": variant, "seed": seed, "kappa": window,
                                    "from_step": first, "log_ratio": {str(p): round(statistics.mean(v), 5) for p, v in sorted(ratios.items())},
                                    "n": {str(p): len(v) for p, v in sorted(ratios.items())}})
    return records


def render(records: list[dict]) -> str:
    """A row per (task, steps, variant): the geometric-mean loss ratio to lora at each position in the booster,
    averaged over the seeds (each seed's mean log-ratio weighted by its step count)."""
    width = max((r["kappa"] for r in records), default=10)
    lines = ["| task, steps | variant | seeds | " + " | ".join(f"step {p}" for p in range(1, width + 1))
             + " | step 2 over step 1 | last step over step 1 |", "|---|---|---|" + "---|" * (width + 2)]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["task"], r["steps"], r["variant"]), []).append(r)
    order = sorted(groups, key=lambda g: (g[0] != "sst2", g[1], list(VARIANTS).index(g[2])))
    for task, steps, variant in order:
        runs = groups[(task, steps, variant)]
        window = runs[0]["kappa"]
        ratio = {}
        for p in range(1, window + 1):
            weighted = [(r["log_ratio"][str(p)], r["n"][str(p)]) for r in runs if str(p) in r["log_ratio"]]
            ratio[p] = math.exp(sum(v * n for v, n in weighted) / sum(n for _, n in weighted))
        cells = [f"{ratio[p]:.2f}" if p in ratio else "" for p in range(1, width + 1)]
        lines.append(f"| {task.upper()}, {steps} | {VARIANTS[variant][0]} (`{variant}`) | {len(runs)} | {' | '.join(cells)} "
                     f"| {ratio[2] / ratio[1]:.2f} | {ratio[window] / ratio[1]:.2f} |")
    return ("Training loss over lora's on the same batch (geometric mean over the steps of all boosters after the "
            "warmup, and over the seeds), by the step's position inside its booster; 1.00 = level with lora.\n\n"
            + "\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    records = measure(args)
    if not records:
        raise SystemExit(f"no finished study run with its lora twin in {', '.join(map(str, args.work))}; "
                         f"{args.results} is left as it is (run python -m benchmarks boosters first)")
    save_results(args.results, records)  # one record per (task, steps, variant, seed), merged under the study's lock
    print(render(load_results(args.results)))
