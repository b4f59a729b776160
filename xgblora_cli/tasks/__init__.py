"""Evaluation tasks: each turns its data into :class:`Question` s (a prompt, candidate answers, the right one)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
