"""Training-data formats: Alpaca, prompt/completion, OpenAI messages, ShareGPT; detection, forcing, column renames,
and one-line errors naming the row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xgblora_cli.common.errors import UserError
from xgblora_cli.data.formats import load_records

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue"}]


def write(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_each_format_is_detected_and_made_canonical(tmp_path: Path) -> None:
    assert load_records(write(tmp_path / "a.jsonl", [{"instruction": "Say hi.", "output": "hi"}])) == [
        {"instruction": "Say hi.", "input": "", "output": "hi"}]
    assert load_records(write(tmp_path / "p.jsonl", [{"prompt": "2+2=", "completion": "4"}])) == [
        {"instruction": "2+2=", "input": "", "output": "4"}]
    assert load_records(write(tmp_path / "m.jsonl", [{"messages": CHAT}])) == [{"messages": CHAT}]
    sharegpt = [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                {"from": "human", "value": "Sky?"}, {"from": "gpt", "value": "Blue"}]
    assert load_records(write(tmp_path / "s.jsonl", [{"conversations": sharegpt}])) == [{"messages": CHAT}]


def test_columns_are_renamed_and_formats_forced(tmp_path: Path) -> None:
    path = write(tmp_path / "qa.jsonl", [{"question": "Capital of France?", "answer": "Paris", "id": 7}])
    with pytest.raises(UserError, match=r"line 1 matches no format \(it has answer, id, question\)"):
        load_records(path)
    renamed = load_records(path, columns={"instruction": "question", "output": "answer"})
    assert renamed == [{"instruction": "Capital of France?", "input": "", "output": "Paris"}]
    forced = load_records(path, fmt="prompt_completion", columns={"prompt": "question", "completion": "answer"})
    assert forced == renamed


@pytest.mark.parametrize(("rows", "message"), [
    ([{"messages": CHAT}, {"messages": [{"role": "bot", "content": "x"}]}],
     r"line 2: messages\[0\] must be \{role: system\|user\|assistant, content: str\}, got role 'bot'"),
    ([{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}],
     "line 1: turn 1 is 'user', expected 'assistant'"),
    ([{"messages": [{"role": "user", "content": "only a question"}]}], "line 1: has no assistant turn to learn from"),
    ([{"conversations": [{"from": "human", "value": "x"}, {"from": "robot", "value": "y"}]}],
     r"line 1: conversations\[1\] must be \{from: system\|human\|gpt, value: str\}, got from 'robot'"),
    ([{"prompt": "x", "completion": 3}], "line 1 has no string field 'completion'"),
    ([{"messages": CHAT}, "text"], "line 2 is not an object"),
])
def test_bad_rows_are_named(tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_records(write(tmp_path / "bad.jsonl", rows))


def test_hub_datasets_get_the_same_treatment(monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: [{"q": "Hi", "a": "Hello"}])
    assert load_records("org/qa", columns={"prompt": "q", "completion": "a"}) == [{"instruction": "Hi", "input": "", "output": "Hello"}]


@pytest.mark.parametrize("name", ["chat_messages_demo", "chat_sharegpt_demo", "prompt_completion_demo"])
def test_the_shipped_demo_files_train(tmp_path: Path, tiny_model_dir: Path, name: str) -> None:
    """Each shipped conversation/prompt-completion fixture trains a few steps on a tiny model, packed."""
    from tests.conftest import ROOT, tiny_recipe
    from xgblora_cli.recipe_file import recipe_from_dict
    from xgblora_cli.runner import start_run

    fields = tiny_recipe(tmp_path, tiny_model_dir, dataset=str(ROOT / "data" / f"{name}.jsonl"), steps_per_booster=2,
                         train={"max_steps": 2, "packing": True, "max_seq_len": 256})
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert len(rows) == 2 and all(row["loss"] > 0 for row in rows)
