"""Prompts for generation, in a target's prompt format: a conversation cut to fit, and prompt records from a file.

A conversation is OpenAI messages ending in a user turn. Its prompt is what training puts before an answer
(:meth:`PromptFormat.conversation`: the chat template's generation prompt, or the plain ``### Instruction:`` /
``### Response:`` blocks), with the BOS once. When it does not fit the budget, whole early exchanges (a user turn
and its answer) go first, a system turn stays; a last user turn that alone is too long is cut from the left.

A prompt file holds records in any training format, detected per record unless one is forced
(``alpaca``/``prompt_completion`` records need no output; conversations may end in a user turn or in an assistant
turn, which is dropped: that is the answer to write).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.jsonfile import read_records, record_names
from xgblora_cli.data.formats import detect, rename, turns
from xgblora_cli.data.prompts import PromptFormat

Messages = list[dict[str, str]]


def prompt_ids(fmt: PromptFormat, tokenizer, messages: Messages) -> list[int]:
    """The ids before the assistant's next answer to ``messages`` (ending in a user turn), BOS once, uncut."""
    pieces = fmt.conversation(tokenizer, [*messages, {"role": "assistant", "content": ""}])
    return fmt.ids(tokenizer, "".join(text for text, _ in pieces[:-1]))


def fit_conversation(fmt: PromptFormat, tokenizer, messages: Messages, budget: int) -> tuple[list[int], int]:
    """(prompt ids of at most ``budget`` tokens, how many early exchanges were dropped to get there)."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    body = messages[len(system):]
    starts = [i for i, m in enumerate(body) if m["role"] == "user"]
    for dropped, start in enumerate(starts):
        ids = prompt_ids(fmt, tokenizer, system + body[start:])
        if len(ids) <= budget:
            return ids, dropped
    return fmt.truncate_left(ids, budget), len(starts) - 1


def record_prompt(fmt: PromptFormat, tokenizer, record: dict) -> list[int]:
    """The prompt ids of a prompt record (Alpaca ``{instruction, input}`` or ``{messages}``), uncut."""
    if "messages" in record:
        return prompt_ids(fmt, tokenizer, record["messages"])
    prompt, _ = fmt.render(tokenizer, {**record, "output": ""})
    return fmt.ids(tokenizer, prompt)


@dataclass
class PromptRecord:
    """One record of a prompt file: its line (or position) for messages, the record as read, and the prompt."""

    index: int  # position among the file's records, from 0 (what the output and --resume key on)
    name: str  # "line N" of a .jsonl file (as an editor counts), "record N" (from 1) of a .json list
    original: dict
    prompt: dict  # {"instruction", "input"} or {"messages": [... ending in a user turn]}


def _prompt_of(row: dict, fmt: str) -> dict:
    """The prompt part of a row of format ``fmt``; ValueError says what is missing."""
    if fmt in ("alpaca", "prompt_completion"):
        key = "instruction" if fmt == "alpaca" else "prompt"
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"has no prompt (a non-empty string field '{key}')")
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise ValueError("field 'input' must be a string")
        return {"instruction": row[key], "input": extra if fmt == "alpaca" else ""}
    key, role_key, text_key, roles, named = (
        ("messages", "role", "content", {"system": "system", "user": "user", "assistant": "assistant"}, "system|user|assistant")
        if fmt == "messages" else
        ("conversations", "from", "value", {"system": "system", "human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}, "system|human|gpt"))
    found = row.get(key)
    if isinstance(found, list) and found and isinstance(found[-1], dict) and roles.get(found[-1].get(role_key)) == "assistant":
        found = found[:-1]  # the answer the file already has: the one to write now
    if not isinstance(found, list) or not any(isinstance(t, dict) and roles.get(t.get(role_key)) == "user" for t in found):
        raise ValueError(f"has no prompt (a user turn in '{key}')")
    checked = turns({key: [*found, {role_key: "gpt" if fmt == "sharegpt" else "assistant", text_key: ""}]},
                    key, role_key, text_key, roles, named)["messages"]
    return {"messages": checked[:-1]}


def load_prompts(path: Path, fmt: str = "auto", columns: dict[str, str] | None = None) -> list[PromptRecord]:
    """The prompt records of a ``.json``/``.jsonl`` file; a bad record is a one-line error naming its line."""
    where = f"--input {path}"
    if not path.is_file():
        raise UserError(f"{where}: file not found")
    if path.suffix not in (".json", ".jsonl"):
        raise UserError(f"{where}: prompts are read from a .json or .jsonl file")
    rows = [rename(row, columns or {}) for row in read_records(path, where)]
    if not rows:
        raise UserError(f"{where}: no prompts (the file holds no records)")
    numbers = record_names(path, len(rows))
    out = []
    for number, row in zip(numbers, rows):
        if not isinstance(row, dict):
            raise UserError(f"{where}: {number} is not an object")
        found = detect(row) if fmt == "auto" else fmt  # auto: per record, so one file may mix formats
        if not found:
            raise UserError(f"{where}: {number} matches no format (it has {', '.join(sorted(row)) or 'no keys'}); "
                            "expected instruction, prompt, messages or conversations (--column renames columns)")
        try:
            out.append(PromptRecord(len(out), number, row, _prompt_of(row, found)))
        except ValueError as err:
            raise UserError(f"{where}: {number} {err}") from None
    return out
