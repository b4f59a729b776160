"""Evaluation tasks: each turns its data into :class:`Question` s (a prompt, candidate answers, the right one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from xgblora_cli.common.errors import UserError


@dataclass
class Question:
    """One multiple-choice item.

    Default scoring reads ``context`` (plain text ending in ``Answer:``, worked examples included) and scores
    each of ``options`` (``" <option text>"``, or MMLU's ``" B"``) as its continuation, as lm-evaluation-harness
    does. ``prompt`` is the instruction as the training data writes it (a chat user message); ``candidates``
    are the answers in the training format (``"the correct answer is answer2"``, ``--scoring label``);
    ``labels`` are the short names generation looks for; ``answer`` indexes the right one; ``group`` is MMLU's
    subject; ``shots`` are worked (prompt, answer) turns for the chat protocols.
    """

    context: str
    options: list[str]
    prompt: str
    candidates: list[str]
    labels: list[str]
    answer: int
    group: str = ""
    shots: list[tuple[str, str]] = field(default_factory=list)  # (prompt, answer) worked examples


@dataclass
class Loaded:
    """A task's questions, plus items that could not be used (counted and reported, never silently dropped)."""

    questions: list[Question]
    skipped: int = 0
    skip_reasons: list[str] = field(default_factory=list)


def collect(records: list, convert: Callable[[dict], "Question | str"], source: str, names: list[str] | None = None) -> Loaded:
    """Turn records into questions with ``convert`` (a Question, or the reason a record cannot be scored).

    A record that is already a string is a reason given by the reader (a hub row it could not convert). Bad
    records are counted, and the first five are named: by ``names`` (``line 7`` of the file, as an editor counts;
    :func:`xgblora_cli.common.jsonfile.record_names`), else ``record N`` from 1.
    """
    if not records:
        raise UserError(f"{source}: no records")
    loaded = Loaded([])
    names = names or [f"record {n}" for n in range(1, len(records) + 1)]
    for name, record in zip(names, records):
        if isinstance(record, str):
            result: Question | str = record
        else:
            result = convert(record) if isinstance(record, dict) else "not an object"
            if not isinstance(result, Question):
                result = f"{name}: {result}"
        if isinstance(result, Question):
            loaded.questions.append(result)
        else:
            loaded.skipped += 1
            if len(loaded.skip_reasons) < 5:
                loaded.skip_reasons.append(result)
    return loaded
