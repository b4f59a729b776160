"""xgblora generate: JSON Lines answers, written whole at the end, --resume skips what is answered, --force replaces
only its own outputs, bad input is one line and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.generation.test_engine import tiny_run  # noqa: F401  (the module's fixture)
from xgblora_cli.common.errors import UserError
from xgblora_cli.core.opening import open_target
from xgblora_cli.generation import batch_file
from xgblora_cli.generation.batch_file import check_output, generate_file, partial_path
from xgblora_cli.generation.engine import Sampling
from xgblora_cli.generation.prompting import load_prompts


def prompts(tmp_path: Path, count: int = 5) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Question {i}: name a colour.", "input": ""}) + "\n" for i in range(count)))
    return path


def test_generate_writes_every_answer_in_order_through_the_command_line(tmp_path: Path, tiny_run: Path) -> None:  # noqa: F811
    out = tmp_path / "answers.jsonl"
    done = run_cli("generate", str(tiny_run), "--input", str(prompts(tmp_path)), "--output", str(out), "--batch-size", "2",
                   "--max-new-tokens", "4", "--compare", "base", "--no-progress")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(5))
    assert all({"record", "answer", "answer_tokens", "answer_seconds", "base_answer", "generated_by"} <= set(r) for r in rows)
    assert rows[3]["record"]["instruction"].startswith("Question 3") and not partial_path(out).exists()
    again = run_cli("generate", str(tiny_run), "--input", str(prompts(tmp_path)), "--output", str(out))
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr
    forced = run_cli("generate", str(tiny_run), "--input", str(prompts(tmp_path)), "--output", str(out), "--force",
                     "--max-new-tokens", "2", "--no-progress")
    assert forced.returncode == 0, forced.stderr


def test_an_interrupted_file_resumes_without_answering_twice(tmp_path: Path, tiny_run: Path, monkeypatch) -> None:  # noqa: F811
    records = load_prompts(prompts(tmp_path))
    opened = open_target(tiny_run, device="cpu")
    out, sampling = tmp_path / "a.jsonl", Sampling(max_new_tokens=3)
    real, calls = batch_file.batch, []

    def failing(model, tokenizer, chunk, sampling):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, tokenizer, chunk, sampling)

    monkeypatch.setattr(batch_file, "batch", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_file(opened, None, records, out, sampling, batch_size=2, resume=False, show_progress=False)
    assert not out.exists() and len(partial_path(out).read_text().splitlines()) == 2  # nothing half-written
    first = partial_path(out).read_text().splitlines()
    calls.clear()
    monkeypatch.setattr(batch_file, "batch", lambda *a: (calls.append(len(a[2])), real(*a))[1])
    summary = generate_file(opened, None, records, out, sampling, batch_size=2, resume=True, show_progress=False)
    assert (summary["answered"], summary["skipped"], sum(calls)) == (3, 2, 3)
    lines = out.read_text().splitlines()
    assert lines[:2] == first and [json.loads(line)["index"] for line in lines] == list(range(5))


def test_an_output_is_replaced_only_when_xgblora_wrote_it(tmp_path: Path) -> None:
    other = tmp_path / "notes.jsonl"
    other.write_text('{"mine": true}\n')
    with pytest.raises(UserError, match="already exists; pass --force"):
        check_output(other, force=False, resume=False)
    with pytest.raises(UserError, match="was not written by xgblora generate"):
        check_output(other, force=True, resume=False)
    with pytest.raises(UserError, match="give a .jsonl file name"):
        check_output(tmp_path / "a.txt", force=False, resume=False)
    with pytest.raises(UserError, match="nothing to resume"):
        check_output(tmp_path / "new.jsonl", force=False, resume=True)
    assert other.read_text() == '{"mine": true}\n'
