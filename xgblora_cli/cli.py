"""The ``xgblora`` command line: train, plan, merge, export, eval, chat, generate, sweep, report. A user error is one
line on stderr and exit code 2."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from xgblora_cli.common.errors import UserError
from xgblora_cli.recipe import Recipe
from xgblora_cli.recipe_file import load_recipe, recipe_to_yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Gradient-boosted rank-1 LoRA fine-tuning.")
console = Console(stderr=True)


INTERRUPTED = {  # what Ctrl-C leaves behind, by command
    "train": "interrupted; work since the last checkpoint is lost (continue with --resume)",
    "generate": "interrupted; the answers written so far are kept (continue with --resume)",
    "sweep": "interrupted; finished rates are kept (run the same sweep again to continue)",
}


def user_errors(func: Callable) -> Callable:
    """Turn UserError into one line and exit 2; Ctrl-C into what it left behind (a resume hint) and exit 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print(INTERRUPTED.get(func.__name__.removesuffix("_command"), "interrupted"), file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


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
    Console().print(table)
    print(f"boosters={plan['num_boosters']} trainable_per_booster={trainable}")


@app.command()
@user_errors
def train(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE", help="YAML recipe"),
    overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="overrides, e.g. train.max_steps=50"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the resolved recipe and plan, train nothing"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in output_dir from its checkpoint"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a non-empty output_dir"),
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
    Console().print(table)
    print(f"peak_bytes={result['peak_bytes']} fits={'yes' if result['fits'] else 'no'}")


@app.command()
@user_errors
def merge(
    run_dir: Path = typer.Argument(..., help="a run directory written by 'xgblora train'"),
    out: Path = typer.Option(..., "--out", help="folder for the merged Hugging Face model"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty --out"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: the run's)"),
) -> None:
    """Write base model + merged boosters as a Hugging Face folder."""
    from xgblora_cli.export.merged_folder import merge_run

    summary = merge_run(run_dir, out, force=force, dtype=dtype)
    console.print(f"merged {summary['boosters']} boosters ({len(summary['touched_weights'])} weights changed) into {out}")


@app.command()
@user_errors
def export(
    run_dir: Path = typer.Argument(..., help="a run directory written by 'xgblora train'"),
    fmt: str = typer.Option(..., "--format", help="peft: a LoRA adapter folder (vLLM, TGI, PEFT); gguf: one file for llama.cpp"),
    out: Path = typer.Option(..., "--out", help="the adapter folder (peft) or the .gguf file"),
    rank: Optional[int] = typer.Option(None, "--rank", help="peft: truncate each update to its best rank-R approximation (default: exact)"),
    dtype: str = typer.Option("f16", "--dtype", help="gguf: f16 | bf16 | q8_0"),
    force: bool = typer.Option(False, "--force", help="replace an existing --out"),
) -> None:
    """Export a run: an exact (or rank-limited) PEFT LoRA adapter, or a merged GGUF file."""
    if fmt == "peft":
        from xgblora_cli.export.peft_adapter import export_peft

        summary = export_peft(run_dir, out, rank, force)
        kept = "" if rank is None else (f"; kept {100 * summary['kept_overall']:.2f}% of the update's norm overall, "
                                        f"{100 * summary['kept_worst']:.2f}% for the worst weight ({summary['kept_worst_weight']})")
        console.print(f"wrote {out}: LoRA rank {summary['rank']} on {summary['weights']} weights "
                      f"({summary['touched']} touched), {summary['bytes'] / 2**20:.1f} MiB{kept}", highlight=False)
    elif fmt == "gguf":
        from xgblora_cli.export.gguf_file import export_gguf

        summary = export_gguf(run_dir, out, dtype, force)
        console.print(f"wrote {out}: {summary['tensors']} tensors, {dtype}, {summary['bytes'] / 2**20:.1f} MiB", highlight=False)
    else:
        raise UserError(f"--format: must be peft or gguf, got {fmt!r}")


@app.command("eval")
@user_errors
def eval_command(
    target: str = typer.Argument(..., help="a run directory, a merged folder, or any model spec (alias, .gguf, folder, hub id)"),
    task: Optional[list[str]] = typer.Option(None, "--task", help="mmlu, boolq, piqa, siqa, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa, sst2, rte, choice, perplexity"),
    data: Optional[str] = typer.Option(None, "--data", help="local data: a file, or a folder laid out like shared/data (glue/, commonsense/, mmlu/)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="score a fixed, seeded subset of N questions per task"),
    batch_size: int = typer.Option(8, "--batch-size", help="questions per forward pass"),
    shots: Optional[int] = typer.Option(None, "--shots", help="MMLU: worked examples from the dev split (0-5)"),
    scoring: Optional[str] = typer.Option(None, "--scoring", help="label (default): answers in the training format after the prompt; loglik: option texts after a plain context; generate: LLM-Adapters protocol"),
    template: Optional[str] = typer.Option(None, "--template", help="auto | chat | plain: override the prompt template (default: a run's own, else auto)"),
    step: Optional[int] = typer.Option(None, "--step", help="a run as it was after step N: a step where a booster ended, or a snapshot kept by train.snapshot_every"),
    output: Optional[Path] = typer.Option(None, "--output", help="write the results JSON here"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda or cuda:N"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="run a hub model's own Python code (a run uses its recipe's setting)"),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="accept a folder with only pickle (.bin/.pt) weights; converted once to safetensors"),
) -> None:
    """Score a model on MMLU, commonsense, GLUE or your own labelled data, or its perplexity.

    A run directory without --task runs its recipe's eval: block; options given here override that block's keys.
    """
    from xgblora_cli.common.fsutil import atomic_write_text
    from xgblora_cli.evaluation.evaluate import eval_settings, evaluate, results_table

    given = {"tasks": task or None, "data": data, "limit": limit, "shots": shots, "scoring": scoring}
    settings = eval_settings(target, given, batch_size=batch_size, template=template, step=step, device=device,
                             trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if output is not None and output.is_dir():
        raise UserError(f"--output {output}: is a folder; give a file name such as results.json")
    results = evaluate(target, settings, console)
    Console().print(results_table(results))
    if output is not None:
        import json

        atomic_write_text(output, json.dumps(results, indent=2) + "\n")


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


def _open(target: str, step: Optional[int], dtype: Optional[str], device: str, template: Optional[str],
          trust_remote_code: bool):  # -> core.opening.Opened
    from xgblora_cli.core.opening import open_target

    return open_target(target, step=step, dtype=dtype, device=device, template=template, trust_remote_code=trust_remote_code)


def _base_of(target, compare: Optional[str], device: str, trust_remote_code: bool):  # -> Opened | None
    """The model ``--compare base`` puts beside ``target``: a run's base model, in the run's prompt format."""
    if compare is None:
        return None
    if compare != "base":
        raise UserError(f"--compare: only 'base' is supported (the target's base model), got {compare!r}")
    if target.base_dir == target.path:
        raise UserError(f"--compare base: {target.path} is itself a base model (compare a run directory, or a merged "
                        "folder whose base is still where its merge recorded it)")
    from xgblora_cli.core.opening import open_target

    base = open_target(target.base_dir, dtype=None, device=device, trust_remote_code=trust_remote_code)
    base.prompt = target.prompt  # asked exactly as the fine-tune is: the difference is the training
    return base


@app.command()
@user_errors
def chat(
    target: str = typer.Argument(..., help="a run directory, a merged folder, or any model spec (alias, .gguf, folder, hub id)"),
    system: Optional[str] = typer.Option(None, "--system", help="a system prompt for the conversation"),
    compare: Optional[str] = typer.Option(None, "--compare", help="base: the base model answers each turn too, beside the target"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="tokens per answer at most"),
    temperature: float = typer.Option(0.0, "--temperature", help="0: greedy, reproducible (default); above 0: sampled"),
    top_p: float = typer.Option(1.0, "--top-p", help="sampling: nucleus probability mass"),
    seed: int = typer.Option(0, "--seed", help="sampling: the random seed"),
    step: Optional[int] = typer.Option(None, "--step", help="a run as it was after step N"),
    template: Optional[str] = typer.Option(None, "--template", help="auto | chat | plain (default: the target's own)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: a run's own, else float32)"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda or cuda:N"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="run a hub model's own Python code"),
) -> None:
    """Talk to a model in its own prompt format, answers streamed; piped input: one user turn per line.

    Inside: /reset, /system TEXT, /exit (or Ctrl-D); Ctrl-C stops the answer being generated.
    """
    import torch

    from xgblora_cli.generation.chat import Session, Speaker, run
    from xgblora_cli.generation.engine import Sampling

    sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    opened = _open(target, step, dtype, device, template, trust_remote_code)
    base = _base_of(opened, compare, device, trust_remote_code)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    name = "run" if opened.kind == "run" else "model"
    speakers = ([Speaker("base", base)] if base is not None else []) + [Speaker(name, opened)]
    torch.manual_seed(seed)
    console.print(f"{target}: {opened.prompt.describe()}" + (f"; beside it, its base {base.path}" if base else ""), highlight=False)
    run(Session(speakers, sampling, system, Console() if interactive else console), interactive)


@app.command()
@user_errors
def generate(
    target: str = typer.Argument(..., help="a run directory, a merged folder, or any model spec (alias, .gguf, folder, hub id)"),
    input_file: Path = typer.Option(..., "--input", help="prompts: a .json/.jsonl file in any training format"),
    output: Path = typer.Option(..., "--output", help="answers: a .jsonl file (the record, the answer, tokens, seconds)"),
    batch_size: int = typer.Option(8, "--batch-size", help="prompts per generate call (left-padded)"),
    compare: Optional[str] = typer.Option(None, "--compare", help="base: the base model answers each prompt too (base_answer)"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="tokens per answer at most"),
    temperature: float = typer.Option(0.0, "--temperature", help="0: greedy, reproducible (default); above 0: sampled"),
    top_p: float = typer.Option(1.0, "--top-p", help="sampling: nucleus probability mass"),
    seed: int = typer.Option(0, "--seed", help="sampling: the random seed"),
    dataset_format: str = typer.Option("auto", "--format", help="auto | alpaca | prompt_completion | messages | sharegpt"),
    columns: Optional[list[str]] = typer.Option(None, "--column", help="rename a column, FORMAT_NAME=YOUR_COLUMN (repeatable), e.g. instruction=question"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run, skipping records already answered"),
    force: bool = typer.Option(False, "--force", help="replace an existing --output written by xgblora generate"),
    step: Optional[int] = typer.Option(None, "--step", help="a run as it was after step N"),
    template: Optional[str] = typer.Option(None, "--template", help="auto | chat | plain (default: the target's own)"),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: a run's own, else float32)"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda or cuda:N"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="run a hub model's own Python code"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show the progress bar"),
) -> None:
    """Answer every prompt of a file, batched, into a JSON Lines file (written whole at the end; --resume continues)."""
    from xgblora_cli.data.formats import FORMATS_ALLOWED
    from xgblora_cli.generation.batch_file import check_output, generate_file
    from xgblora_cli.generation.engine import Sampling
    from xgblora_cli.generation.prompting import load_prompts

    if dataset_format not in FORMATS_ALLOWED:
        raise UserError(f"--format: must be one of {', '.join(FORMATS_ALLOWED)}, got {dataset_format!r}")
    renames = dict(_column(item) for item in columns or [])
    sampling = Sampling(max_new_tokens, temperature, top_p, seed)
    check_output(output, force, resume)
    records = load_prompts(input_file, dataset_format, renames)  # bad prompts fail before a model is loaded
    opened = _open(target, step, dtype, device, template, trust_remote_code)
    base = _base_of(opened, compare, device, trust_remote_code)
    summary = generate_file(opened, base, records, output, sampling, batch_size, resume, progress)
    rate = summary["tokens"] / max(summary["seconds"], 1e-9)
    console.print(f"wrote {output}: {summary['answered']} answers" + (f" ({summary['skipped']} already there)" if summary["skipped"] else "")
                  + (f", {rate:,.1f} tokens/s" if summary["answered"] else ""), highlight=False)


def _column(item: str) -> tuple[str, str]:
    target, sep, source = item.partition("=")
    if not sep or not target or not source:
        raise UserError(f"--column: expected FORMAT_NAME=YOUR_COLUMN such as instruction=question, got {item!r}")
    return target, source


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
) -> None:
    """Train RECIPE at a few learning rates on its data less a held-out cut, score each on the cut, report the best.

    Scored by accuracy when the held-out records are labelled choice/classification records (LLM-Adapters or
    {prompt, choices, answer}), else by their perplexity. Resumable: finished rates are reused.
    """
    from xgblora_cli.sweep import best, sweep

    folder = out or Path(f"{load_recipe(recipe_path, overrides or []).output_dir}_sweep")
    points = sweep(recipe_path, overrides or [], parse_rates(lrs), val, folder, progress)
    chosen = best(points)
    table = Table("learning rate", f"validation {chosen.metric}", "run")
    for point in points:
        shown = f"{100 * point.value:.2f}%" if point.metric == "accuracy" else f"{point.value:.3f}"
        table.add_row(f"{point.learning_rate:g}" + (" (best)" if point is chosen else ""), shown, point.run_dir)
    Console().print(table)
    print(f"best: train.learning_rate={chosen.learning_rate:g} ({folder / 'sweep.json'}); "
          f"train on all the data with: xgblora train {recipe_path} train.learning_rate={chosen.learning_rate:g}")


def main() -> None:
    app()
