"""The tables and plots of ``benchmarks.quality``, made from its results file alone (``benchmarks/results/
quality.json``, or ``quality_grid.json`` for ``--rates grid``): pure functions of data, no run folder needed.

    python -m benchmarks quality_report [--results benchmarks/results/quality.json] [--doc docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from benchmarks.lib import ROOT, save_figure, spread, write_doc

RESULTS = ROOT / "benchmarks" / "results"


def shares_cell(shares: list[list | None]) -> str:
    """``false 100%, 11%, 94%``: the share of test answers giving the first label, per run ("?" where not recorded)."""
    known = [share for share in shares if share]
    if not known:
        return "-"
    return f"`{known[0][0]}` " + ", ".join(f"{share[1]:.0f}%" if share else "?" for share in shares)


def task_table(task: str, data: dict) -> str:
    base = data["base"]
    lines = [f"**{task.upper()}** (test = GLUE dev; validation = held-out training records)", "",
             "| model | learning rate (validation accuracy by rate) | validation acc. | test accuracy | test answers giving the first label, by seed "
             "| s per step (the run's median, load-dependent) | trainable params |",
             "|---|---|---|---|---|---|---|",
             f"| base (untouched) | - | {base['val']:.1f} | {base['test']:.1f} | {shares_cell([base['share']])} | - | 0 |"]
    for method, row in data["methods"].items():
        plan, grid = row["plan"], {float(lr): acc for lr, acc in row["grid"].items()}
        grid_text = ", ".join(f"{lr:g}: {acc:.1f}" for lr, acc in sorted(grid.items())) or row["source"]
        val = f"{grid[row['lr']]:.1f}" if grid else "-"
        label = f"{method} (r={plan['rank']}, k={plan['layers_per_booster']}, T={plan['num_boosters']})"
        tests = [s["test"] for s in row["seeds"]]
        lines.append(f"| {label} | **{row['lr']:g}** ({grid_text}) | {val} | **{spread(tests)}** (n={len(tests)}) "
                     f"| {shares_cell([s['share'] for s in row['seeds']])} | {spread([s['step_s'] for s in row['seeds']], 2)} "
                     f"| {row['trainable']:,}/booster |")
    return "\n".join(lines)


def curve_table(data: dict) -> str:
    methods = data["methods"]
    steps = [p[0] for p in next(iter(methods.values()))["seeds"][0]["curve"]] if methods else []
    lines = ["| method | " + " | ".join(f"step {s}" for s in steps) + f" | step time vs lora ({data['cost_source']}) |",
             "|---|" + "---|" * (len(steps) + 1)]
    for method, row in methods.items():
        curves = [s["curve"] for s in row["seeds"]]
        cells = [spread([c[i][2] for c in curves]) for i in range(len(steps))]
        cost = data["costs"].get(method)
        lines.append(f"| {method} | " + " | ".join(cells) + (f" | {cost:.2f}x |" if cost is not None else " | - |"))
    return "\n".join(lines)


def section(task: str, data: dict) -> str:
    budget = data["budget"]
    curves = curve_table(data) if data["methods"] else "(no finished run yet)"
    return (f"{task_table(task, data)}\n\nTest accuracy against steps ({data['curve_limit']} seeded test questions per point, "
            f"mean ± sd over seeds; budget {budget['steps']} steps x batch {budget['batch']}, at most {budget['seq']} tokens, "
            f"{2 * budget['train']} training / {2 * budget['val']} validation records):\n\n{curves}")


def render(results: dict) -> str:
    """The section's markdown: the header, a table and a curve table per task, the plots' links."""
    name = results["name"]
    unfinished = results.get("unfinished", [])
    return (f"Command: `{results['command']}` ({results['seconds']:.0f} s for this invocation; finished runs in "
            f"`{results['work']}` are reused). Runs in {results['dtype']} (the base model is scored as shipped, float32), "
            f"{results['jobs']} side by side. Accuracy in %, label scoring (`xgblora eval`'s default); test accuracy "
            f"mean ± standard deviation over seeds {' '.join(map(str, results['seeds']))}.\n\n"
            + (f"Not finished when this was written: {', '.join(unfinished)}.\n\n" if unfinished else "")
            + "\n\n".join(section(task, data) for task, data in results["tasks"].items())
            + f"\n\n![test accuracy against steps and seconds]({name}_curves.png)\n\n![training loss, seed 0]({name}_loss.png)")


def plot_curves(results: dict, out: Path) -> None:
    """Test accuracy against steps and against training time in lora steps (steps x the method's step time over
    lora's), one panel pair per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = {task: data for task, data in results["tasks"].items() if data["methods"]}
    figure, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.6 * len(tasks)), squeeze=False)
    for row_axes, (task, data) in zip(axes, tasks.items()):
        for method, row in data["methods"].items():
            curves = [s["curve"] for s in row["seeds"]]
            for column, scale, label in ((0, 1.0, "optimizer step"), (1, data["costs"].get(method), "training time in lora steps (step-time ratio)")):
                if scale is None:
                    continue
                xs = [scale * point[0] for point in curves[0]]
                ys = [statistics.mean(c[i][2] for c in curves) for i in range(len(curves[0]))]
                row_axes[column].plot(xs, ys, marker="o", label=method)
                row_axes[column].set(xlabel=label, ylabel=f"{task} test accuracy (%)")
        row_axes[0].legend()
    save_figure(figure, out)


def plot_loss(results: dict, out: Path) -> None:
    """The seed-0 runs' training loss (moving average of 5 steps), from the losses the results keep."""
    from xgblora_cli.report import plot_curves as plot_loss_curves

    curves = {label: (list(range(1, len(losses) + 1)), losses) for label, losses in results.get("losses", {}).items()}
    if curves:
        plot_loss_curves(curves, out)


def render_with_plots(results: dict, doc: Path) -> str:
    """The markdown, with its two plots written beside ``doc``."""
    name = results["name"]
    if any(data["methods"] for data in results["tasks"].values()):
        plot_curves(results, doc.parent / f"{name}_curves.png")
    plot_loss(results, doc.parent / f"{name}_loss.png")
    return render(results)


def write(results: dict, doc: Path) -> str:
    """Render ``results`` into ``doc`` between its markers, and its plots beside it; the markdown."""
    name = results["name"]
    body = render_with_plots(results, doc)
    write_doc(doc, body, f"<!-- {name}:start -->", f"<!-- {name}:end -->")
    return body


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks quality_report", description=__doc__.split("\n")[0])
    p.add_argument("--results", type=Path, default=RESULTS / "quality.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    if not args.results.is_file():
        raise SystemExit(f"{args.results}: no results file; {args.doc} is left as it is (measure: python -m benchmarks quality)")
    print(write(json.loads(args.results.read_text()), args.doc))


if __name__ == "__main__":
    main()
