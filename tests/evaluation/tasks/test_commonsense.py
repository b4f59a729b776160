"""LLM-Adapters records -> questions: labels, option texts, stems, and counted skips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xgblora_cli.common.errors import UserError
from xgblora_cli.evaluation.tasks import commonsense
from xgblora_cli.evaluation.tasks.commonsense import labels_of, to_question

ARC = {
    "instruction": "Please choose the correct answer to the question: Which is a gas?\n\nAnswer1: ice Answer2: steam "
                   "Answer3: wood\n\nAnswer format: answer1/answer2/answer3",
    "input": "", "output": "the correct answer is answer2", "answer": "answer2",
}


def test_an_arc_record_becomes_a_question() -> None:
    q = to_question(ARC)
    assert q.context == "Question: Which is a gas?\nAnswer:"
    assert q.options == [" ice", " steam", " wood"]
    assert q.candidates[1] == "the correct answer is answer2" and q.answer == 1
    assert q.labels == ["answer1", "answer2", "answer3"]


def test_boolq_and_winogrande_formats() -> None:
    boolq = {"instruction": "Please answer the following question with true or false, question: is the sky blue?\n\n"
             "Answer format: true/false", "answer": "true", "output": "the correct answer is true"}
    q = to_question(boolq)
    assert q.options == [" true", " false"] and q.answer == 0 and q.context == "Question: is the sky blue?\nAnswer:"
    wino = {"instruction": "Please choose the correct answer to fill in the blank to complete the given sentence: "
            "Ann gave Bo a gift because _ was kind.\n\nOption1: Ann Option2: Bo\n\nAnswer format: option1/option2",
            "answer": "option1", "output": "the correct answer is option1"}
    assert to_question(wino).options == [" Ann", " Bo"]
    assert labels_of("x\n\nAnswer format: ending1/ending2/ending3/ending4") == ["ending1", "ending2", "ending3", "ending4"]


def test_unparsable_records_are_counted_skips_not_zeros(tmp_path: Path) -> None:
    bad_answer = {**ARC, "answer": "answer9"}
    no_format = {**ARC, "instruction": "Which is a gas?"}
    (tmp_path / "t.json").write_text(json.dumps([ARC, bad_answer, no_format, 3]))
    loaded = commonsense.load("arc_easy", tmp_path / "t.json")
    assert len(loaded.questions) == 1 and loaded.skipped == 3
    assert "answer 'answer9' is not one of answer1/answer2/answer3" in loaded.skip_reasons[0]


def test_folder_layout_and_wrong_files(tmp_path: Path) -> None:
    (tmp_path / "commonsense" / "ARC-Easy").mkdir(parents=True)
    (tmp_path / "commonsense" / "ARC-Easy" / "test.json").write_text(json.dumps([ARC]))
    assert len(commonsense.load("arc_easy", tmp_path).questions) == 1
    with pytest.raises(UserError, match="no test file for task 'piqa'"):
        commonsense.load("piqa", tmp_path)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(UserError, match=r"x.json: not valid JSON \(line 1\)"):
        commonsense.load("arc_easy", tmp_path / "x.json")
