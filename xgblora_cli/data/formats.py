"""Training-data formats: read a local file or a hub dataset, rename columns, detect the format, check every row.

Four formats, detected per file from its first record (or forced with ``dataset_format``):

- ``alpaca``: ``{"instruction", "input" (optional), "output"}``;
- ``prompt_completion``: ``{"prompt", "completion"}`` (becomes an Alpaca record with no input);
- ``messages``: OpenAI-style ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``;
- ``sharegpt``: ``{"conversations": [{"from": "system"|"human"|"gpt", "value": str}, ...]}`` (-> messages).

Every row becomes either an Alpaca record ``{"instruction", "input", "output"}`` or a conversation
``{"messages": [...]}`` with OpenAI roles, user and assistant turns alternating after an optional system turn
and at least one assistant turn. ``dataset_columns`` renames a file's or hub dataset's columns first
(``{instruction: question, output: answer}`` reads ``question`` as ``instruction``). A row that does not fit is a
one-line error naming the dataset, the row and what is wrong.
"""

from __future__ import annotations

from pathlib import Path

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.jsonfile import read_records, record_names
from xgblora_cli.data.hubdata import hub_rows

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


def read_rows(spec: str, split: str = "train") -> list:
    """The raw rows of a local ``.json``/``.jsonl`` file or of a hub dataset's ``split``."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix not in (".json", ".jsonl"):
            raise UserError(f"dataset '{spec}': local datasets must be .json or .jsonl files")
        rows = read_records(path, f"dataset '{spec}'")
    elif path.suffix in (".json", ".jsonl") or spec.startswith((".", "/", "~")):
        raise UserError(f"dataset '{spec}': file not found")
    else:
        rows = hub_rows(spec, None, split, f"dataset '{spec}': not a local .json/.jsonl file and not loadable from the hub: {{error}}")
    if not rows:
        raise UserError(f"dataset '{spec}': no records")
    return rows


def rename(row: object, columns: dict[str, str]) -> object:
    """``row`` with each ``columns`` source name read under its target name (``{target: source}``)."""
    if not columns or not isinstance(row, dict):
        return row
    renamed = {key: value for key, value in row.items() if key not in columns.values()}
    for target, source in columns.items():
        if source in row:
            renamed[target] = row[source]
    return renamed


def detect(row: object) -> str | None:
    """The format a record looks like, or None."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        return "messages"
    if "conversations" in row:
        return "sharegpt"
    if "prompt" in row or "completion" in row:
        return "prompt_completion"
    if "instruction" in row or "output" in row:
        return "alpaca"
    return None


def alpaca(row: dict) -> dict[str, str]:
    for key in ("instruction", "output"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"has no string field '{key}' (records need instruction, output and optionally input)")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError("field 'input' must be a string")
    return {"instruction": row["instruction"], "input": extra, "output": row["output"]}


def prompt_completion(row: dict) -> dict[str, str]:
    for key in ("prompt", "completion"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"has no string field '{key}'")
    return {"instruction": row["prompt"], "input": "", "output": row["completion"]}


def check_turns(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """System first if at all, then user and assistant alternating, at least one assistant turn."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for turn, message in enumerate(body):
        expected = "user" if turn % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ValueError(f"turn {turn + len(messages) - len(body)} is {message['role']!r}, expected {expected!r} "
                             "(an optional system turn, then user and assistant alternating)")
    if not any(m["role"] == "assistant" for m in body):
        raise ValueError("has no assistant turn to learn from")
    return messages


def turns(row: dict, key: str, role_key: str, text_key: str, roles: dict[str, str], named: str) -> dict:
    """A conversation under ``row[key]`` as OpenAI messages: ``role_key`` mapped through ``roles`` (``named``: how
    errors list them), ``text_key`` the text."""
    found = row.get(key)
    if not isinstance(found, list) or not found:
        raise ValueError(f"{key!r} must be a non-empty list of {{{role_key}, {text_key}}}")
    out = []
    for i, turn in enumerate(found):
        if not isinstance(turn, dict) or turn.get(role_key) not in roles or not isinstance(turn.get(text_key), str):
            who = turn.get(role_key) if isinstance(turn, dict) else turn
            raise ValueError(f"{key}[{i}] must be {{{role_key}: {named}, {text_key}: str}}, got {role_key} {who!r}")
        out.append({"role": roles[turn[role_key]], "content": turn[text_key]})
    return {"messages": check_turns(out)}


def messages(row: dict) -> dict:
    return turns(row, "messages", "role", "content", {role: role for role in ROLES}, "system|user|assistant")


def sharegpt(row: dict) -> dict:
    return turns(row, "conversations", "from", "value", SHAREGPT_ROLES, "system|human|gpt")


CONVERTERS = {"alpaca": alpaca, "prompt_completion": prompt_completion, "messages": messages, "sharegpt": sharegpt}
FORMATS_ALLOWED = ("auto", *CONVERTERS)


def load_records(spec: str, split: str = "train", fmt: str = "auto", columns: dict[str, str] | None = None) -> list[dict]:
    """Checked training records (Alpaca records or conversations) from ``spec``; ``fmt`` ``auto`` detects."""
    rows = [rename(row, columns or {}) for row in read_rows(spec, split)]
    names = record_names(Path(spec).expanduser() if Path(spec).expanduser().is_file() else None, len(rows))
    if fmt == "auto":
        fmt = detect(rows[0]) or ""
        if not fmt:
            keys = ", ".join(sorted(rows[0])) if isinstance(rows[0], dict) else type(rows[0]).__name__
            raise UserError(f"dataset '{spec}': {names[0]} matches no format (it has {keys}); expected instruction/output, "
                            "prompt/completion, messages or conversations (dataset_columns renames columns)")
    convert = CONVERTERS[fmt]
    records = []
    for name, row in zip(names, rows):
        if not isinstance(row, dict):
            raise UserError(f"dataset '{spec}': {name} is not an object ({fmt} records are objects)")
        try:
            records.append(convert(row))
        except ValueError as err:
            raise UserError(f"dataset '{spec}': {name} {err}" if fmt in ("alpaca", "prompt_completion")
                            else f"dataset '{spec}': {name}: {err}") from None
    return records
