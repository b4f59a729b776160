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
