"""What a user should pick: accuracy against peak memory and step time, for the presets and the xgblora settings
worth having (the runs of benchmarks/quality.py and benchmarks/sensitivity.py).

- Accuracy: read from the evaluations those benchmarks wrote (nothing is scored here): validation accuracy
  (held-out training records) over the seeds that have it, and test accuracy (GLUE dev) where the setting was
  scored on test.
- Memory: ``xgblora plan`` of the setting on LLaMA3-8B (``recipes/mmlu_llama3.yaml`` with the setting's keys and
  ``model=recipes/shapes/llama3-8b``) for a 24 GiB GPU: the per-GPU peak a user of the reference card gets.
- Step time: measured here, in one invocation, in interleaved rounds (every per-step configuration once, then
  again), each a fresh ``xgblora train`` of ``--steps`` steps of the SST-2 budget (batch 8, 128 tokens) with a new
  booster every 2 steps (so a round covers several block draws); the median step after the first two, as a ratio
  to lora's. Settings that differ only in kappa, rate or a variant share their configuration's time.

Step times are cached in ``--work``/step_times.json, so a rerun reuses them.

Every number the table shows is kept as data in ``--results`` (``benchmarks/results/tradeoff.json``), so the runs
need not be here (a clean clone, or runs an earlier round did not keep): validation accuracy is taken per seed
from the sensitivity record (``benchmarks/results/sensitivity.json``), a run here overriding its seed; a test
cell whose runs here cover fewer seeds than the record keeps the record's; step times and planned peaks are
recorded as measured. ``--report-only`` renders the table from the records alone.

    python -m benchmarks tradeoff [--steps 8] [--rounds 2] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.lib import (
    ROOT,
    Missing,
    Runner,
    recorded_accuracy,
    run_name,
    save_figure,
    spread,
    step_times_file,
    timed_steps,
    write_doc,
)
from benchmarks.sensitivity import RESULTS as SENSITIVITY_RESULTS
from benchmarks.sensitivity import VARIANTS
from benchmarks.sensitivity import load_record as load_sensitivity

START, END = "<!-- bench_tradeoff:start -->", "<!-- bench_tradeoff:end -->"
# name: (preset or "control", learning rate, extra recipe keys, per-step configuration)
SETTINGS = {
    "lora (r=8, all blocks)": ("lora", 1e-3, {}, "lora"),
    "cola (r=8, all blocks, T=3)": ("cola", 3e-3, {}, "cola"),
    "cola at its default rate (RTE's choice)": ("cola", 1e-3, {}, "cola"),
    "xgblora preset (r=1, k=4, kappa=10)": ("xgblora", 1e-2, {}, "xgblora k=4"),
    "xgblora, kappa=20": ("xgblora", 1e-2, {"steps_per_booster": 20}, "xgblora k=4"),
    "xgblora, k=8": ("xgblora", 1e-2, {"layers_per_booster": 8}, "xgblora k=8"),
    "xgblora, carried AdamW moments": ("xgblora", 1e-2, {"train.carry_moments": True}, "xgblora k=4"),
    "control: one rank-1 adapter on 4 blocks, no merges": ("control", 1e-2, {}, "xgblora k=4"),
}
CONFIGS = {"lora": {"method": "lora"}, "cola": {"method": "cola"},
           "xgblora k=4": {"method": "xgblora"}, "xgblora k=8": {"method": "xgblora", "layers_per_booster": 8}}
TASKS = ["sst2", "rte"]
TASK_NAMES = {"sst2": "SST-2", "rte": "RTE"}
COLUMNS = [(task, kind) for task in TASKS for kind in ("val", "test")]
"""The accuracy columns, in the table's order."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_quality")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--results", type=Path, default=RESULTS, help="the record every number is kept in (JSON)")
    p.add_argument("--report-only", action="store_true", help="the table from the records alone; run nothing")
    return p.parse_args()


def scores(work: Path, task: str, method: str, lr: float, extra: dict, kind: str) -> dict[int, float]:
    """Accuracy (%) by seed in ``{kind}_acc.json`` of the setting's finished runs, over seeds 0-4."""
    found = {}
    for seed in range(5):
        result = work / task / run_name(method, lr, seed, extra or None) / f"{kind}_acc.json"
        if result.is_file():
            found[seed] = recorded_accuracy(result)
    return found


def sensitivity_label(method: str, lr: float, extra: dict) -> str | None:
    """The sensitivity table's row for a setting: ``xgblora lr 0.01``, ``k = 8, lr 0.01``; None if it has none
    (the control, a setting it does not vary)."""
    if not extra:
        return None if method == "control" else f"{method} lr {lr:g}"
    return next((f"{label}, lr {lr:g}" for label, keys in VARIANTS.values() if keys == extra), None)


RESULTS = ROOT / "benchmarks" / "results" / "tradeoff.json"


def load_record(path: Path) -> dict:
    """The record: ``{"command", "times": {config: [seconds by round]}, "settings": {name: {"peak_bytes", "ratio",
    "test": {task: {"mean", "sd", "n"}}}}}`` (empty before a first run)."""
    return json.loads(path.read_text()) if path.is_file() else {"times": {}, "settings": {}}


def summary(values: list[float]) -> dict:
    """What a test cell shows, as data: mean, standard deviation (None for one seed) and the number of seeds."""
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def summary_cell(kept: dict | None) -> str:
    """``88.6 ± 0.1 (n=3)`` of a recorded summary (``-`` without one)."""
    if not kept:
        return "-"
    sd = "" if kept["sd"] is None else f" ± {kept['sd']:.1f}"
    return f"{kept['mean']:.1f}{sd} (n={kept['n']})"


def planned_peak(work: Path, method: str, extra: dict) -> int:
    """Per-GPU peak bytes ``xgblora plan`` gives the setting on LLaMA3-8B: the mmlu_llama3 recipe's batch and
    length, its method keys (rank, k, kappa) left to the setting's preset."""
    recipe = yaml.safe_load((ROOT / "recipes" / "mmlu_llama3.yaml").read_text())
    for key in ("method", "rank", "layers_per_booster", "steps_per_booster", "eval"):
        recipe.pop(key, None)
    recipe.update(model=str(ROOT / "recipes" / "shapes" / "llama3-8b"), method="xgblora" if method == "control" else method)
    if method == "control":
        recipe["steps_per_booster"] = recipe["train"]["max_steps"]  # one booster
    recipe_file = work / "tradeoff" / f"plan_{method}{run_name('', 0, 0, extra or None)}.yaml"
    recipe_file.parent.mkdir(parents=True, exist_ok=True)
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    overrides = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in extra.items()]
    out = subprocess.run([sys.executable, "-m", "xgblora_cli", "plan", str(recipe_file), *overrides, "--gpu-memory", "24GiB",
                          "--json"], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out)["peak_bytes"]


def step_times(args: argparse.Namespace, runner: Runner) -> dict[str, list[float]]:
    """Median step seconds per configuration and round (interleaved rounds), cached in step_times.json."""
    cache = step_times_file(args.work)
    times: dict[str, list[float]] = json.loads(cache.read_text()) if cache.is_file() else {}
    if all(len(times.get(name, [])) >= args.rounds for name in CONFIGS):
        return times
    data = args.work / "sst2" / "train.jsonl"
    for round_ in range(args.rounds):
        for name, keys in CONFIGS.items():
            if len(times.get(name, [])) > round_:
                continue
            out = args.work / "tradeoff" / f"{name.replace(' ', '_').replace('=', '')}_r{round_}"
            times.setdefault(name, []).append(timed_steps(runner, out, data, keys, args.steps, round_))
            cache.write_text(json.dumps(times, indent=1))
    return times


def val_by_seed(work: Path | None, per_seed: dict, setting: tuple, task: str) -> dict[int, float]:
    """A setting's validation accuracy by seed: the sensitivity record's, a run here overriding its seed."""
    method, lr, extra, _ = setting
    here = scores(work, task, method, lr, extra, "val") if work is not None else {}
    return {**per_seed.get((task, sensitivity_label(method, lr, extra)), {}), **here}


def cell(values: list[float]) -> str:
    """``mean ± sd (n=N)`` of a setting's seeds (``-`` without any)."""
    return f"{spread(values)} (n={len(values)})" if values else "-"


Point = tuple[str, dict[str, list[float]], float, float | None]
"""A setting in the plot: its name, its validation accuracies per task (one per seed), planned peak GiB, step-time
ratio to lora (None where not measured)."""


def measured(args: argparse.Namespace, runner: Runner, record: dict) -> dict:
    """The record with what is here added: test accuracies of the runs here (where they cover at least the seeds
    the record has), step times (measured, or cached in the work folder), each setting's planned peak."""
    try:
        record["times"] = step_times(args, runner)
    except Missing:
        pass
    times = record["times"]
    lora_s = statistics.median(times["lora"]) if times.get("lora") else None
    for name, setting in SETTINGS.items():
        method, lr, extra, config = setting
        kept = record["settings"].setdefault(name, {"test": {}})
        kept["lr"] = lr
        kept["peak_bytes"] = planned_peak(args.work, method, extra)
        if lora_s and times.get(config) and not args.report_only:
            kept["ratio"] = statistics.median(times[config]) / lora_s
        for task in TASKS:
            here = scores(args.work, task, method, lr, extra, "test")
            if here and len(here) >= (kept["test"].get(task) or {}).get("n", 0):
                kept["test"][task] = summary(list(here.values()))
    record["command"] = f"python -m benchmarks tradeoff{' --report-only' if args.report_only else ''}"
    return record


def table(record: dict, per_seed: dict, work: Path | None = None) -> tuple[str, list[Point]]:
    """The markdown table and the plot's points (settings with validation accuracy on at least one task), from
    the records (and, where ``work`` is given, the validation scores of the runs there)."""
    lines = ["| setting | SST-2 val. | SST-2 test | RTE val. | RTE test | LLaMA3-8B peak / 24 GiB GPU (planned) "
             "| step time vs lora (measured, SmolLM2) |", "|---|---|---|---|---|---|---|"]
    points = []
    for name, setting in SETTINGS.items():
        kept = record["settings"].get(name, {"test": {}})
        peak, ratio = kept.get("peak_bytes", 0) / 2**30, kept.get("ratio")
        val = {task: list(val_by_seed(work, per_seed, setting, task).values()) for task in TASKS}
        row = []
        for task, kind in COLUMNS:
            row.append(cell(val[task]) if kind == "val" else summary_cell(kept["test"].get(task)))
        lines.append(f"| {name}, lr {setting[1]:g} | " + " | ".join(row)
                     + f" | {peak:.2f} GiB | {'-' if ratio is None else f'{ratio:.2f}x'} |")
        if any(val.values()):
            points.append((name, val, peak, ratio))
    return "\n".join(lines), points


def plot(points: list[Point], out: Path) -> None:
    """One row per task (validation accuracy, mean with its seeds' standard deviation as a bar), planned memory
    on the left and step time on the right; a legend names the settings (labels beside the points overlapped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = "osD^v<>Px*"
    figure, axes = plt.subplots(len(TASKS), 2, figsize=(12, 3.8 * len(TASKS)), squeeze=False)
    for row, task in zip(axes, TASKS):
        for i, (name, val, peak, ratio) in enumerate(points):
            if not val[task]:
                continue
            mean = statistics.mean(val[task])
            sd = statistics.stdev(val[task]) if len(val[task]) > 1 else 0.0
            for axis, x in zip(row, (peak, ratio)):
                if x is not None:
                    axis.errorbar(x, mean, yerr=sd, fmt=markers[i % len(markers)], color=f"C{i}", capsize=3,
                                  label=f"{name.split(' (')[0]} (n={len(val[task])})")
        for axis in row:  # the validation cuts are class-balanced
            axis.axhline(50, linestyle=":", color="grey", linewidth=0.8)
        ylabel = f"{TASK_NAMES[task]} validation accuracy (%; dotted: chance)"
        row[0].set(xlabel="planned peak GiB per GPU, LLaMA3-8B, micro-batch 2 x 512", ylabel=ylabel)
        row[1].set(xlabel="step time / lora's (measured here, SmolLM2-135M)", ylabel=ylabel)
        named = {}  # a setting without a step time is only in the memory panel; the legend names every one
        for axis in row:
            named.update(zip(*reversed(axis.get_legend_handles_labels())))
        row[1].legend(named.values(), named.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    save_figure(figure, out)


def render(record: dict, per_seed: dict, doc: Path, work: Path | None = None, plots: bool = True) -> str:
    """The section and (``plots``) its plot beside ``doc``, from the records."""
    body, points = table(record, per_seed, work)
    png = doc.parent / "bench_tradeoff.png"
    if plots:
        plot(points, png)
    rounds = ", ".join(f"{name}: {' / '.join(f'{s:.2f}' for s in values)} s" for name, values in record["times"].items())
    return (f"Command: `{record['command']}`. Accuracy in % "
            f"(mean ± sd over the seeds that have it, label scoring); step seconds by round: {rounds or 'not measured'}."
            f"\n\n{body}\n\n![accuracy against memory and step time]({png.name})")


def main() -> None:
    args = parse_args()
    record = load_record(args.results)
    per_seed = load_sensitivity(SENSITIVITY_RESULTS)[0]
    if not args.report_only:
        record = measured(args, Runner(False), record)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(record, indent=1) + "\n")
    elif not record["settings"]:
        raise SystemExit(f"{args.results}: no record; {args.doc} is left as it is (measure: python -m benchmarks tradeoff)")
    text = render(record, per_seed, args.doc, None if args.report_only else args.work)
    write_doc(args.doc, text, START, END)
    print(text)


if __name__ == "__main__":
    main()
