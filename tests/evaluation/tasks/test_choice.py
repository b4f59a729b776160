"""A user's own labelled file (--task choice): plain {prompt, choices, answer} and LLM-Adapters records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xgblora_cli.common.errors import UserError
from xgblora_cli.evaluation.tasks import choice


def test_both_layouts_and_bad_rows_counted_and_named(tmp_path: Path) -> None:
    rows = [
        {"prompt": "Is fire hot?", "choices": ["yes", "no"], "answer": 0},
        {"prompt": "Colour of grass?", "choices": ["red", "green", "blue"], "answer": "green"},
        {"instruction": "Please answer: sky?\n\nAnswer format: true/false", "output": "the correct answer is true", "answer": "true"},
        {"prompt": "Bad answer", "choices": ["a", "b"], "answer": 2},
        {"prompt": "One choice", "choices": ["a"], "answer": 0},
        {"text": "neither layout"},
        ["not", "an", "object"],
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = choice.load(path)
    assert [q.answer for q in loaded.questions] == [0, 1, 0]
    first = loaded.questions[0]
    assert first.candidates == ["yes", "no"] and first.options == [" yes", " no"] and first.context == "Is fire hot?\nAnswer:"
    assert loaded.questions[2].candidates == ["the correct answer is true", "the correct answer is false"]
    assert loaded.skipped == 4
    assert loaded.skip_reasons[0] == "line 4: 'answer' 2 is neither an index 0..1 nor one of the choices"
    assert loaded.skip_reasons[1] == "line 5: 'choices' must be a list of two or more non-empty strings"
    assert loaded.skip_reasons[2].startswith("line 6: neither a {prompt, choices, answer} record")
    assert loaded.skip_reasons[3] == "line 7: not an object"


def test_wrong_data_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="task 'choice': give --data"):
        choice.load(None)
    with pytest.raises(UserError, match="reads one .json or .jsonl file"):
        choice.load(tmp_path)
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(UserError, match="e.json: no records"):
        choice.load(tmp_path / "e.json")
