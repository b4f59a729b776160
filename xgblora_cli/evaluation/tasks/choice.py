"""``--task choice``: a user's own labelled multiple-choice or classification file.

Two record layouts, told apart per record:

- **LLM-Adapters**: ``{"instruction", "input" (optional), "output", "answer"}`` with an ``Answer format: a/b``
  line ending the instruction (what the commonsense and GLUE tasks use);
- **plain**: ``{"prompt": str, "choices": [str, ...], "answer": index or one of the choices}``. The model is
  scored on each choice's text as the response to the prompt (``label`` and ``generate``), or after
  ``<prompt>\\nAnswer:`` (``loglik``).
"""

from __future__ import annotations

from pathlib import Path

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.jsonfile import read_records, record_names
from xgblora_cli.evaluation.tasks import Loaded, Question, collect
from xgblora_cli.evaluation.tasks.commonsense import to_question


def plain_question(record: dict) -> Question | str:
    """A Question from a ``{"prompt", "choices", "answer"}`` record, or why it cannot be scored."""
    prompt, choices, answer = record.get("prompt"), record.get("choices"), record.get("answer")
    if not isinstance(prompt, str) or not prompt.strip():
        return "no 'prompt' string"
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        return "'choices' must be a list of two or more non-empty strings"
    if len(set(choices)) != len(choices):
        return "'choices' has duplicates"
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        index = answer
    elif isinstance(answer, str) and answer in choices:
        index = choices.index(answer)
    else:
        return f"'answer' {answer!r} is neither an index 0..{len(choices) - 1} nor one of the choices"
    return Question(f"{prompt.strip()}\nAnswer:", [f" {c}" for c in choices], prompt, list(choices), list(choices), index)


def to_choice_question(record: dict) -> Question | str:
    if "prompt" in record or "choices" in record:
        return plain_question(record)
    if "instruction" in record:
        return to_question(record)
    return "neither a {prompt, choices, answer} record nor an LLM-Adapters {instruction, output, answer} record"


def load(data: Path | None) -> Loaded:
    """Questions of a user's ``.json``/``.jsonl`` file (either layout, per record)."""
    if data is None:
        raise UserError("task 'choice': give --data, a .json/.jsonl file of {prompt, choices, answer} or LLM-Adapters records")
    if not data.is_file() or data.suffix not in (".json", ".jsonl"):
        raise UserError(f"--data {data}: task 'choice' reads one .json or .jsonl file")
    records = read_records(data, f"--data {data}")
    return collect(records, to_choice_question, str(data), record_names(data, len(records)))
