"""Commands that talk to a model: ``chat`` and ``generate``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from xgblora_cli.cli.app import app, console, out_console, user_errors
from xgblora_cli.common.errors import UserError

# the options chat and generate share (one definition each; typer reads them as defaults)
TARGET = typer.Argument(..., help="a run directory, a merged folder, or any model spec (alias, .gguf, folder, hub id)")
MAX_NEW_TOKENS = typer.Option(256, "--max-new-tokens", help="tokens per answer at most")
TEMPERATURE = typer.Option(0.0, "--temperature", help="0: greedy, reproducible (default); above 0: sampled")
TOP_P = typer.Option(1.0, "--top-p", help="sampling: nucleus probability mass")
SEED = typer.Option(0, "--seed", help="sampling: the random seed")
STEP = typer.Option(None, "--step", help="a run as it was after step N")
TEMPLATE = typer.Option(None, "--template", help="auto | chat | plain (default: the target's own)")
DTYPE = typer.Option(None, "--dtype", help="float32 | bfloat16 | float16 (default: a run's own, else float32)")
DEVICE = typer.Option("auto", "--device", help="auto (CUDA if present), cpu, cuda or cuda:N")
TRUST_REMOTE_CODE = typer.Option(False, "--trust-remote-code", help="run a hub model's own Python code")


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
    target: str = TARGET,
    system: Optional[str] = typer.Option(None, "--system", help="a system prompt for the conversation"),
    compare: Optional[str] = typer.Option(None, "--compare", help="base: the base model answers each turn too, beside the target"),
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    seed: int = SEED,
    step: Optional[int] = STEP,
    template: Optional[str] = TEMPLATE,
    dtype: Optional[str] = DTYPE,
    device: str = DEVICE,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
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
    run(Session(speakers, sampling, system, out_console if interactive else console), interactive)


@app.command()
@user_errors
def generate(
    target: str = TARGET,
    input_file: Path = typer.Option(..., "--input", help="prompts: a .json/.jsonl file in any training format"),
    output: Path = typer.Option(..., "--output", help="answers: a .jsonl file (the record, the answer, tokens, seconds)"),
    batch_size: int = typer.Option(8, "--batch-size", help="prompts per generate call (left-padded)"),
    compare: Optional[str] = typer.Option(None, "--compare", help="base: the base model answers each prompt too (base_answer)"),
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    seed: int = SEED,
    dataset_format: str = typer.Option("auto", "--format", help="auto | alpaca | prompt_completion | messages | sharegpt"),
    columns: Optional[list[str]] = typer.Option(None, "--column", help="rename a column, FORMAT_NAME=YOUR_COLUMN (repeatable), e.g. instruction=question"),
    resume: bool = typer.Option(False, "--resume", help="continue an interrupted run, skipping records already answered"),
    force: bool = typer.Option(False, "--force", help="replace an existing --output written by xgblora generate"),
    step: Optional[int] = STEP,
    template: Optional[str] = TEMPLATE,
    dtype: Optional[str] = DTYPE,
    device: str = DEVICE,
    trust_remote_code: bool = TRUST_REMOTE_CODE,
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


