"""Prompts for generation: the training format's prompt, history cut from the oldest exchange, prompt files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import make_tokenizer
from xgblora_cli.common.errors import UserError
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.generation.prompting import (
    fit_conversation,
    load_prompts,
    prompt_ids,
    record_prompt,
)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(chat=True)


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_a_prompt_is_what_training_puts_before_the_answer(tokenizer, template: str) -> None:
    fmt = PromptFormat(template, (), 512)
    record = {"instruction": "Is the sky blue?", "input": "", "output": "yes"}
    ids, labels = fmt.encode(tokenizer, *fmt.render(tokenizer, record))
    prompt_len = labels.index(next(label for label in labels if label != -100))
    assert record_prompt(fmt, tokenizer, record) == ids[:prompt_len]
    conversation = [{"role": "user", "content": "Is the sky blue?"}, {"role": "assistant", "content": "yes"}]
    ids, labels = fmt.encode_conversation(tokenizer, conversation)
    prompt_len = labels.index(next(label for label in labels if label != -100))
    assert prompt_ids(fmt, tokenizer, conversation[:1]) == ids[:prompt_len]


def test_history_that_does_not_fit_loses_its_oldest_exchange_first(tokenizer) -> None:
    fmt = PromptFormat("chat", (), 512)
    turns = [{"role": "system", "content": "Be brief."}]
    for i in range(4):
        turns += [{"role": "user", "content": f"question number {i} " * 4}, {"role": "assistant", "content": f"answer {i} " * 4}]
    turns.append({"role": "user", "content": "last question"})
    whole = prompt_ids(fmt, tokenizer, turns)
    ids, dropped = fit_conversation(fmt, tokenizer, turns, len(whole))
    assert (ids, dropped) == (whole, 0)
    ids, dropped = fit_conversation(fmt, tokenizer, turns, len(whole) - 1)
    assert dropped == 1 and ids == prompt_ids(fmt, tokenizer, turns[:1] + turns[3:])  # system kept, exchange 0 gone
    text = tokenizer.decode(ids)
    assert "Be brief." in text and "question number 0" not in text and "question number 1" in text
    ids, dropped = fit_conversation(fmt, tokenizer, turns, 10)  # even the last turn alone is too long: cut from the left
    assert dropped == 4 and len(ids) == 10


def test_prompt_files_read_every_format_and_name_bad_lines_as_an_editor_does(tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text('{"instruction": "a", "input": "b"}\n\n{"prompt": "c"}\n'
                    '{"messages": [{"role": "user", "content": "d"}, {"role": "assistant", "content": "old answer"}]}\n'
                    '{"conversations": [{"from": "human", "value": "e"}]}\n')
    records = load_prompts(good)
    assert [r.index for r in records] == [0, 1, 2, 3]
    assert records[0].prompt == {"instruction": "a", "input": "b"} and records[1].prompt == {"instruction": "c", "input": ""}
    assert records[2].prompt == {"messages": [{"role": "user", "content": "d"}]}  # the answer to write is dropped
    assert records[3].prompt == {"messages": [{"role": "user", "content": "e"}]}
    assert load_prompts(good, columns={"instruction": "q"})[0].prompt["instruction"] == "a"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a"}\n\n{"instruction": ""}\n')
    with pytest.raises(UserError, match=r"bad.jsonl: line 3 has no prompt"):  # line 3 of the file, blank line counted
        load_prompts(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="no prompts"):
        load_prompts(empty)
    listed = tmp_path / "list.json"
    listed.write_text('[{"prompt": "x"}, {"answer": 1}]')
    with pytest.raises(UserError, match=r"record 2 matches no format \(it has answer\)"):
        load_prompts(listed)
    with pytest.raises(UserError, match="line 1 has no prompt \\(a user turn"):  # a conversation with no user turn
        load_prompts(_write(tmp_path / "a.jsonl", '{"messages": [{"role": "assistant", "content": "x"}]}\n'))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
