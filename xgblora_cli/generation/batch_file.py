"""``xgblora generate``: answers to a file of prompts, batched, written as JSON Lines.

Each output line is the input record, the answer, its new tokens and seconds (``--compare base``: the base model's
too), in the order of the input. Lines are appended to a partial file beside the output as batches finish and
the partial file becomes the output by a rename only once every prompt is answered, so an output is never
half-written; ``--resume`` continues a partial file, skipping the records it already answers. An existing output
is replaced only with ``--force`` and only if xgblora wrote it (its lines carry ``generated_by``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from xgblora_cli import __version__
from xgblora_cli.common.errors import UserError
from xgblora_cli.common.fsutil import append_line, atomic_write_text
from xgblora_cli.common.outputs import check_replace
from xgblora_cli.common.progress import Bar
from xgblora_cli.core.opening import Opened
from xgblora_cli.generation.engine import Sampling, batch, prepare_for_generation
from xgblora_cli.generation.prompting import PromptRecord, record_prompt

MARKER = "generated_by"


def partial_path(output: Path) -> Path:
    """Where answers collect until every prompt has one: ``.<name>.partial`` beside the output."""
    return output.parent / f".{output.name}.partial"


def written_by_us(path: Path) -> bool:
    """Whether ``path`` is an output of ``xgblora generate`` (its first line carries the marker)."""
    try:
        with open(path, encoding="utf-8") as handle:
            first = json.loads(handle.readline())
    except (OSError, ValueError):
        return False
    return isinstance(first, dict) and str(first.get(MARKER, "")).startswith("xgblora")


def check_output(output: Path, force: bool, resume: bool) -> None:
    """Refuse an output that exists (without ``--force``, or one xgblora did not write), before anything loads."""
    if output.is_dir():
        raise UserError(f"--output {output}: is a folder; give a file name such as answers.jsonl")
    if output.suffix != ".jsonl":
        raise UserError(f"--output {output}: answers are written as JSON Lines; give a .jsonl file name")
    if not resume:
        check_replace(output, force, written_by_us, "--output", "xgblora generate", " (or --resume to finish it)")
    elif not partial_path(output).exists() and not output.exists():
        raise UserError(f"--resume: nothing to resume for {output} (no output and no partial file {partial_path(output).name})")


def answered(output: Path) -> dict[int, dict]:
    """The lines already written for ``output`` (its partial file, or a finished output), by record index; a torn
    last line (a crash mid-write) is dropped."""
    source = partial_path(output) if partial_path(output).exists() else output
    done: dict[int, dict] = {}
    if source.exists():
        for line in source.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "index" in row:
                done[int(row["index"])] = row
    return done


def generate_file(target: Opened, base: Opened | None, records: list[PromptRecord], output: Path, sampling: Sampling,
                  batch_size: int, resume: bool, show_progress: bool = True) -> dict:
    """Answer every record not yet answered, ``batch_size`` at a time; returns a summary."""
    if batch_size < 1:
        raise UserError(f"--batch-size: must be >= 1, got {batch_size}")
    done = answered(output) if resume else {}
    if resume and not partial_path(output).exists() and len(done) >= len(records):
        return {"answered": 0, "skipped": len(done), "output": str(output), "tokens": 0, "seconds": 0.0}
    partial = partial_path(output)
    if not resume:
        partial.unlink(missing_ok=True)
    elif not partial.exists() and done:  # resuming a finished output (e.g. with more records): start from it
        partial.write_text("".join(json.dumps(done[i]) + "\n" for i in sorted(done)), encoding="utf-8")
    todo = [r for r in records if r.index not in done]
    speakers = [("answer", target)] + ([("base_answer", base)] if base is not None else [])
    for _, opened in speakers:
        prepare_for_generation(opened.model)
    torch.manual_seed(sampling.seed)
    tokens = seconds = 0
    with Bar("generate", len(records), len(done)) if show_progress else _Quiet() as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            rows = [{"index": r.index, "record": r.original, MARKER: f"xgblora {__version__}"} for r in chunk]
            for key, opened in speakers:
                prompts = [_fit(opened, record_prompt(opened.prompt, opened.tokenizer, r.prompt), sampling) for r in chunk]
                for row, answer in zip(rows, batch(opened.model, opened.tokenizer, prompts, sampling)):
                    row.update({key: answer.text, f"{key}_tokens": answer.tokens,
                                f"{key}_seconds": round(answer.seconds / len(chunk), 4)})
                    if key == "answer":
                        tokens += answer.tokens
                        seconds += answer.seconds / len(chunk)
            for row in rows:
                append_line(partial, json.dumps(row, ensure_ascii=False))
            bar.advance(len(done) + start + len(chunk), f"{tokens / max(seconds, 1e-9):,.1f} tokens/s")
    _finish(partial, output, len(records))
    return {"answered": len(todo), "skipped": len(done), "output": str(output), "tokens": tokens, "seconds": seconds}


def _fit(opened: Opened, ids: list[int], sampling: Sampling) -> list[int]:
    """A prompt cut from the left (BOS kept) to leave room for the answer within the format's length."""
    length = opened.prompt.max_len
    return opened.prompt.truncate_left(ids, max(length - sampling.max_new_tokens, length // 2))


def _finish(partial: Path, output: Path, count: int) -> None:
    """The partial file, sorted by record, becomes the output in one rename."""
    rows = answered(output)
    if len(rows) < count:
        raise RuntimeError(f"{partial}: {len(rows)} of {count} answers; not renamed")
    atomic_write_text(output, "".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in sorted(rows)))
    partial.unlink(missing_ok=True)


class _Quiet:
    def __enter__(self) -> "_Quiet":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, done: int, stats: str) -> None:
        return None
