"""Commands on what training made: ``eval``, ``merge`` and ``export``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xgblora_cli.cli.app import app, console, out_console, user_errors
from xgblora_cli.common.errors import UserError


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
    data: Optional[str] = typer.Option(None, "--data", help="local data: a file, or a folder with glue/, commonsense/ or mmlu/ subfolders in the layout docs/evaluation.md describes"),
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
    out_console.print(results_table(results))
    if output is not None:
        import json

        atomic_write_text(output, json.dumps(results, indent=2) + "\n")


