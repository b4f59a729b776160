"""Hub schemas -> LLM-Adapters records: each converter's output parses into the right question."""

from __future__ import annotations

import pytest

from xgblora_cli.common.errors import UserError
from xgblora_cli.evaluation.tasks import commonsense, hub
from xgblora_cli.evaluation.tasks.commonsense import to_question

ROWS = {
    "boolq": ({"question": "is water wet", "answer": False, "passage": "..."}, [" true", " false"], 1),
    "piqa": ({"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}, [" twist the lid", " eat the lid"], 0),
    "siqa": ({"context": "Kai lent money.", "question": "How does Kai feel?", "answerA": "kind", "answerB": "sad",
              "answerC": "angry", "label": "1"}, [" kind", " sad", " angry"], 0),
    "hellaswag": ({"activity_label": "Cooking", "ctx": "She cracks an egg", "endings": ["a", "b", "c", "into the bowl"],
                   "label": "3"}, [" a", " b", " c", " into the bowl"], 3),
    "winogrande": ({"sentence": "Ann thanked Bo because _ helped.", "option1": "Ann", "option2": "Bo", "answer": "2"}, [" Ann", " Bo"], 1),
    "arc_easy": ({"question": "Which is a gas?", "choices": {"text": ["ice", "steam"], "label": ["A", "B"]}, "answerKey": "B"}, [" ice", " steam"], 1),
    "openbookqa": ({"question_stem": "The sun is", "choices": {"text": ["a star", "a moon"], "label": ["A", "B"]},
                    "answerKey": "A"}, [" a star", " a moon"], 0),
}


@pytest.mark.parametrize("task", sorted(ROWS))
def test_converted_rows_parse_into_the_right_question(task: str) -> None:
    row, options, answer = ROWS[task]
    question = to_question(hub.SOURCES[task][3](row))
    assert question.options == options and question.answer == answer


def test_every_task_has_a_hub_source() -> None:
    assert set(hub.SOURCES) == set(commonsense.FOLDERS)


def test_hub_rows_go_through_datasets_and_bad_rows_are_counted(monkeypatch) -> None:
    import datasets

    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return [ROWS["arc_easy"][0], {"question": "broken"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    loaded = commonsense.load("arc_easy", None)
    assert calls == [("allenai/ai2_arc", "ARC-Easy", "test")]
    assert len(loaded.questions) == 1 and loaded.skipped == 1 and "hub row 1" in loaded.skip_reasons[0]


def test_unreachable_hub_is_one_line(monkeypatch) -> None:
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network\nmore lines")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match=r"task 'piqa': could not read ybisk/piqa from the hub \(no network\); pass --data"):
        commonsense.load("piqa", None)
