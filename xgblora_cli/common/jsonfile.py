"""The one reader of record files: a JSON list (or ``{"data": [...]}``) or JSON Lines, with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from xgblora_cli.common.errors import UserError


def read_records(path: Path, what: str) -> list:
    """The records of ``path`` (``.jsonl``: one JSON value per non-empty line; else a JSON list).

    ``what`` names the file in errors (``dataset 'x.jsonl'``, ``--data x.json``); a bad line is named by number.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{what}: not readable ({type(err).__name__})") from None
    if Path(path).suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{what}: not valid JSON (line {number}): {err.msg}") from None
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{what}: not valid JSON (line {err.lineno}): {err.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"{what}: expected a JSON list of records or JSON Lines, got a {type(data).__name__}")
    return data


def record_names(path: Path | None, count: int) -> list[str]:
    """How each of ``count`` records is named in messages, counted as the user's editor counts: ``line N`` of a
    .jsonl file (from 1, blank lines included), else ``record N`` (from 1: a .json list, a hub dataset's rows)."""
    if path is not None and Path(path).suffix == ".jsonl" and Path(path).is_file():
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
        return [f"line {n}" for n, line in enumerate(lines, 1) if line.strip()][:count]
    return [f"record {n}" for n in range(1, count + 1)]
