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

The tables are their own record where the runs are not here (a clean clone, or runs an earlier round did not keep):
validation accuracy is taken per seed from the sensitivity table (benchmarks/sensitivity.py, which holds every
seed's number), a run here overriding its seed; a test cell whose runs here cover fewer seeds than the table shows
keeps the table's cell; and with ``--report-only`` and no step-time cache the step times are read back from the
table's caption and its step-time ratios kept (the caption's seconds are rounded to 0.01).

    .venv/bin/python -m benchmarks tradeoff [--steps 8] [--rounds 2] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.lib import (
    ROOT,
    Missing,
    Runner,
    block,
    recorded_accuracy,
    require_runs,
    row_cells,
    run_name,
    save_figure,
    spread,
    step_times_file,
    timed_steps,
    write_doc,
)
from benchmarks.sensitivity import END as SENSITIVITY_END
from benchmarks.sensitivity import START as SENSITIVITY_START
from benchmarks.sensitivity import VAL_SIZES, VARIANTS, shown

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
    p.add_argument("--report-only", action="store_true")
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


Shown = tuple[dict[tuple[str, str], dict[int, float]], dict[tuple[str, str, str], str], dict[str, list[float]]]
"""What the doc shows: the sensitivity table's accuracy by seed per (task, row label); the trade-off table's cells
per (row label, task, kind), its step-time ratio under (row label, "step", "ratio"); its caption's step seconds by
round per configuration."""


def shown_in(doc: Path) -> Shown:
    """Parse the sensitivity and trade-off tables of ``doc`` (empty where a table is missing)."""
    text = doc.read_text() if doc.is_file() else ""
    per_seed = shown(block(text, SENSITIVITY_START, SENSITIVITY_END), VAL_SIZES)[0]
    own = block(text, START, END)
    cells = {}
    for line in own.splitlines():
        cols = row_cells(line)
        if len(cols) == 7 and cols[0] not in ("setting", "---"):
            cells.update({(cols[0], task, kind): cols[1 + i] for i, (task, kind) in enumerate(COLUMNS)})
            cells[(cols[0], "step", "ratio")] = cols[6]
    rounds = re.search(r"step seconds by round: (.*?)\.\n", own)
    times = {}
    for item in rounds.group(1).split(", ") if rounds else []:
        name, _, values = item.rpartition(": ")
        if name and values.endswith(" s"):
            times[name] = [float(v) for v in values.removesuffix(" s").split(" / ")]
    return per_seed, cells, times


def shown_n(cell_text: str) -> int:
    """How many seeds a table cell averages: ``73.2 ± 9.0 (n=3)`` -> 3, ``-`` -> 0."""
    found = re.search(r"\(n=(\d+)\)", cell_text)
    return int(found.group(1)) if found else 0


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


def val_by_seed(work: Path, before: Shown, setting: tuple, task: str) -> dict[int, float]:
    """A setting's validation accuracy by seed: the sensitivity table's, a run here overriding its seed."""
    method, lr, extra, _ = setting
    return {**before[0].get((task, sensitivity_label(method, lr, extra)), {}), **scores(work, task, method, lr, extra, "val")}


def accuracy_cell(work: Path, before: Shown, name: str, setting: tuple, task: str, kind: str) -> str:
    """One accuracy cell: validation by ``val_by_seed``; test from the runs here unless they cover fewer seeds than
    the table's cell, which is then kept."""
    if kind == "val":
        return cell(list(val_by_seed(work, before, setting, task).values()))
    method, lr, extra, _ = setting
    here = scores(work, task, method, lr, extra, kind)
    kept = before[1].get((f"{name}, lr {lr:g}", task, kind), "-")
    return kept if len(here) < shown_n(kept) else cell(list(here.values()))


def cell(values: list[float]) -> str:
    """``mean ± sd (n=N)`` of a setting's seeds (``-`` without any)."""
    return f"{spread(values)} (n={len(values)})" if values else "-"


Point = tuple[str, dict[str, list[float]], float, float | None]
"""A setting in the plot: its name, its validation accuracies per task (one per seed), planned peak GiB, step-time
ratio to lora (None where not measured)."""


def table(args: argparse.Namespace, times: dict[str, list[float]], before: Shown,
          recorded_times: bool = False) -> tuple[str, list[Point]]:
    """The markdown table and the plot's points (settings with validation accuracy on at least one task);
    ``recorded_times``: ``times`` were read back from the caption, so the table's ratios are kept."""
    lora_s = statistics.median(times["lora"]) if times.get("lora") else None
    lines = ["| setting | SST-2 val. | SST-2 test | RTE val. | RTE test | LLaMA3-8B peak / 24 GiB GPU (planned) "
             "| step time vs lora (measured, SmolLM2) |", "|---|---|---|---|---|---|---|"]
    points = []
    for name, setting in SETTINGS.items():
        method, lr, extra, config = setting
        peak = planned_peak(args.work, method, extra) / 2**30
        ratio = statistics.median(times[config]) / lora_s if lora_s and times.get(config) else None
        kept = before[1].get((f"{name}, lr {lr:g}", "step", "ratio"), "-")
        if recorded_times and kept != "-":
            ratio = float(kept.removesuffix("x"))
        lines.append(f"| {name}, lr {lr:g} | " + " | ".join(accuracy_cell(args.work, before, name, setting, t, k) for t, k in COLUMNS)
                     + f" | {peak:.2f} GiB | {'-' if ratio is None else f'{ratio:.2f}x'} |")
        val = {task: list(val_by_seed(args.work, before, setting, task).values()) for task in TASKS}
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


def main() -> None:
    args = parse_args()
    if args.report_only:
        require_runs(args.work, args.doc)
    runner = Runner(args.report_only)
    before = shown_in(args.doc)
    try:
        times, recorded = step_times(args, runner), False
    except Missing:
        times, recorded = before[2], True
    body, points = table(args, times, before, recorded)
    png = args.doc.parent / "bench_tradeoff.png"
    plot(points, png)
    rounds = ", ".join(f"{name}: {' / '.join(f'{s:.2f}' for s in values)} s" for name, values in times.items())
    text = (f"Command: `python -m benchmarks tradeoff{' --report-only' if args.report_only else ''}`. Accuracy in % "
            f"(mean ± sd over the seeds that have it, label scoring); step seconds by round: {rounds or 'not measured'}."
            f"\n\n{body}\n\n![accuracy against memory and step time]({png.name})")
    write_doc(args.doc, text, START, END)
    print(text)


if __name__ == "__main__":
    main()
