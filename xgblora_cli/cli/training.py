"""Commands that train: ``train``, ``plan``, ``sweep``, and ``report`` (loss plots of runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from xgblora_cli.cli.app import app, console, out_console, user_errors
from xgblora_cli.common.errors import UserError
from xgblora_cli.recipe import Recipe
from xgblora_cli.recipe_file import load_recipe, recipe_to_yaml


def _dry_run(recipe: Recipe, source: str) -> None:
    from xgblora_cli.common.runtime import pick_device
    from xgblora_cli.plan import GIB, plan_recipe

    result = plan_recipe(recipe, source, str(pick_device(recipe.device)))
    plan, trainable = result["inputs"]["plan"], result["inputs"]["trainable_per_booster"]
    print(recipe_to_yaml(recipe), end="")
    table = Table(title="boosting plan", show_header=False)
    for key, value in [
        ("method", recipe.method),
        ("boosters T", plan["num_boosters"]),
        ("steps per booster (kappa)", plan["steps_per_booster"]),
        ("blocks per booster (k)", f"{plan['layers_per_booster']} of {plan['num_layers']}"),
        ("rank r / alpha", f"{plan['rank']} / {plan['alpha']:g}"),
        ("trainable parameters per booster", f"{trainable:,}"),
        ("estimated peak memory (xgblora plan)", f"{result['peak_bytes'] / GIB:.2f} GiB"),
    ]:
        table.add_row(key, str(value))
    out_console.print(table)
    print(f"boosters={plan['num_boosters']} trainable_per_booster={trainable}")


@app.command()
@user_errors
def train(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="YAML recipe"),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="overrides, e.g. train.max_steps=50"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved recipe and plan, train nothing"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in output_dir from its checkpoint"),
    overwrite: bool = typer.Option(False, "--force", "--overwrite", help="replace the run in output_dir (never a folder that holds no run)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
    memory_check: bool = typer.Option(True, "--memory-check/--no-memory-check", help="refuse a run the memory plan says cannot fit"),
) -> None:
    """Fine-tune a model with the boosting loop described by RECIPE."""
    recipe = load_recipe(recipe_path, overrides or [])
    if dry_run:
        _dry_run(recipe, str(recipe_path))
        return
    from xgblora_cli.runner import start_run

    run_dir = start_run(recipe, str(recipe_path), resume=resume, overwrite=overwrite, progress=progress, memory_check=memory_check)
    console.print(f"done: {run_dir}  (merge with: xgblora merge {run_dir} --out {run_dir}/merged)")  # rank 0: the others exit in start_run


@app.command()
@user_errors
def plan(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="YAML recipe"),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="overrides, e.g. method=lora rank=32"),
    gpu_memory: Optional[str] = typer.Option(None, "--gpu-memory", help="plan for a GPU of this size, e.g. 24GiB (default: this machine's device)"),
    gpus: int = typer.Option(1, "--gpus", help="data-parallel ranks (torchrun --nproc_per_node): the plan is per GPU; with train.sharding: fsdp each holds 1/N of the base"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON object with peak_bytes and the components"),
) -> None:
    """Estimate peak training memory by component and say whether it fits."""
    import json

    from xgblora_cli.common.runtime import pick_device
    from xgblora_cli.plan import GIB, device_memory, parse_size, plan_recipe

    recipe = load_recipe(recipe_path, overrides or [])
    if gpu_memory is not None:
        device = "cuda"
        try:
            budget = parse_size(gpu_memory)
        except ValueError:
            raise UserError(f"--gpu-memory: expected a size such as 24GiB or 80GB, got {gpu_memory!r}") from None
    else:
        device = str(pick_device(recipe.device))
        budget = device_memory(device)
    if gpus < 1 or recipe.train.batch_size % gpus:
        raise UserError(f"--gpus: train.batch_size ({recipe.train.batch_size}) must divide by the number of GPUs, got {gpus}")
    result = plan_recipe(recipe, str(recipe_path), device, gpus)
    result.update(budget_bytes=budget, fits=result["peak_bytes"] <= budget)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    per = f", per GPU of {gpus}" + (" (base sharded)" if recipe.train.sharding == "fsdp" else " (base replicated)") if gpus > 1 else ""
    table = Table(title=f"memory plan of {recipe_path} on {device} ({budget / GIB:.1f} GiB{per})")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    for name, value in result["components"].items():
        table.add_row(name, f"{value / GIB:.2f}")
    table.add_row("[bold]peak", f"[bold]{result['peak_bytes'] / GIB:.2f}")
    out_console.print(table)
    print(f"peak_bytes={result['peak_bytes']} fits={'yes' if result['fits'] else 'no'}")


def parse_rates(text: str) -> list[float]:
    """``3e-3,1e-2`` -> [0.003, 0.01]; a one-line error naming ``--lrs`` otherwise."""
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--lrs: a comma-separated list of learning rates such as 3e-3,1e-2,3e-2, got {text!r}") from None


@app.command("sweep")
@user_errors
def sweep_command(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="YAML recipe"),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="overrides, as for train"),
    lrs: str = typer.Option("3e-3,1e-2,3e-2", "--lrs", help="learning rates to try, comma-separated"),
    val: int = typer.Option(200, "--val", help="training records held out for validation (never trained on)"),
    out: Optional[Path] = typer.Option(None, "--out", help="sweep folder (default: the recipe's output_dir + _sweep)"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bars"),
    force: bool = typer.Option(False, "--force", help="start the sweep in --out afresh (only a sweep's folder is replaced)"),
) -> None:
    """Train RECIPE at a few learning rates on its data less a held-out cut, score each on the cut, report the best.

    Scored by accuracy when the held-out records are labelled choice/classification records (LLM-Adapters or
    {prompt, choices, answer}), else by their perplexity. Resumable: finished rates are reused.
    """
    from xgblora_cli.sweep import best, sweep

    folder = out or Path(f"{load_recipe(recipe_path, overrides or []).output_dir}_sweep")
    points = sweep(recipe_path, overrides or [], parse_rates(lrs), val, folder, progress, force)
    chosen = best(points)
    table = Table("learning rate", f"validation {chosen.metric}", "run")
    for point in points:
        shown = f"{100 * point.value:.2f}%" if point.metric == "accuracy" else f"{point.value:.3f}"
        table.add_row(f"{point.learning_rate:g}" + (" (best)" if point is chosen else ""), shown, point.run_dir)
    out_console.print(table)
    print(f"best: train.learning_rate={chosen.learning_rate:g} ({folder / 'sweep.json'}); "
          f"train on all the data with: xgblora train {recipe_path} train.learning_rate={chosen.learning_rate:g}")


@app.command()
@user_errors
def report(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="one run: its loss.png; several: a comparison"),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG file (default: RUN_DIR/loss.png, or compare.png)"),
) -> None:
    """Plot training loss with booster boundaries (one run) or several runs' curves side by side."""
    from xgblora_cli.report import plot_compare, plot_run

    path = plot_run(run_dirs[0], out) if len(run_dirs) == 1 else plot_compare(run_dirs, out or Path("compare.png"))
    console.print(f"wrote {path}")


