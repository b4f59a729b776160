"""The prompt format: templates, response-only labels, truncation, and the BOS exactly once."""

from __future__ import annotations

import pytest

from tests.conftest import make_tokenizer
from xgblora_cli.common.errors import UserError
from xgblora_cli.data.prompts import IGNORE, PromptFormat, bos_ids, chat_template_of

RECORD = {"instruction": "Name a colour.", "input": "Be brief.", "output": "Blue is a colour."}


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(chat=True)


@pytest.fixture(scope="module")
def bos_tokenizer():
    return make_tokenizer(chat=True, bos=True)


def test_chat_template_and_response_only_labels(tokenizer) -> None:
    fmt = PromptFormat.resolve(tokenizer, "auto", 512)
    assert fmt.chat and fmt.bos == ()
    prompt, response = fmt.render(tokenizer, RECORD)
    assert prompt.startswith("<|im_start|>user\nName a colour.\n\nBe brief.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")
    assert response == "Blue is a colour.<|im_end|>\n"
    ids, labels = fmt.encode(tokenizer, prompt, response)
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE)
    assert all(lab == IGNORE for lab in labels[:first])
    assert labels[first:] == ids[first:]
    assert tokenizer.decode(ids[first:]) == response


def test_plain_template_when_the_tokenizer_has_none() -> None:
    plain = make_tokenizer(chat=False)
    assert not chat_template_of(plain, "auto")
    fmt = PromptFormat.resolve(plain, "auto", 512)
    prompt, response = fmt.render(plain, RECORD)
    assert fmt.template == "plain"
    assert prompt == "### Instruction:\nName a colour.\n\n### Input:\nBe brief.\n\n### Response:\n"
    assert response == "Blue is a colour.<|im_end|>"
    with pytest.raises(UserError, match="prompt_template: 'chat' needs a tokenizer with a chat template"):
        PromptFormat.resolve(plain, "chat", 512)


def test_truncation_keeps_the_response_and_the_end_of_the_prompt(tokenizer) -> None:
    fmt = PromptFormat.resolve(tokenizer, "chat", 64)
    long = {"instruction": "word " * 200 + "QUESTION END", "input": "", "output": "answer " * 50}
    ids, labels = fmt.encode(tokenizer, *fmt.render(tokenizer, long))
    assert len(ids) == len(labels) == 64
    n_response = sum(lab != IGNORE for lab in labels)
    assert n_response == 32  # half the budget is kept for the response
    assert "assistant" in tokenizer.decode(ids[:32])  # the prompt's end survives


def test_the_format_round_trips_through_a_dict(bos_tokenizer) -> None:
    fmt = PromptFormat.resolve(bos_tokenizer, "plain", 100)
    assert PromptFormat.from_dict(fmt.to_dict()) == fmt
    assert "BOS" in fmt.describe() and "plain" in fmt.describe()


def test_bos_is_read_from_the_tokenizer(tokenizer, bos_tokenizer) -> None:
    assert bos_ids(tokenizer) == ()
    assert bos_ids(bos_tokenizer) == (bos_tokenizer.convert_tokens_to_ids("<s>"),)


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_training_labels_start_after_exactly_one_bos(bos_tokenizer, template: str) -> None:
    """The chat template writes <s> itself, the plain one does not: either way the sequence holds it once, first,
    without a label."""
    bos = bos_tokenizer.convert_tokens_to_ids("<s>")
    fmt = PromptFormat.resolve(bos_tokenizer, template, 512)
    ids, labels = fmt.encode(bos_tokenizer, *fmt.render(bos_tokenizer, RECORD))
    assert ids[0] == bos and ids.count(bos) == 1
    assert labels[0] == IGNORE
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE)
    assert bos_tokenizer.decode(ids[first:]).startswith("Blue is a colour.")


def test_truncation_keeps_the_bos_in_front(bos_tokenizer) -> None:
    bos = bos_tokenizer.convert_tokens_to_ids("<s>")
    fmt = PromptFormat.resolve(bos_tokenizer, "plain", 40)
    long = {"instruction": "word " * 200, "input": "", "output": "answer " * 50}
    ids, labels = fmt.encode(bos_tokenizer, *fmt.render(bos_tokenizer, long))
    assert len(ids) == 40 and ids[0] == bos and ids.count(bos) == 1
    assert fmt.truncate_left([bos, 5, 6, 7], 3) == [bos, 6, 7]
    assert fmt.truncate_left([5, 6, 7], 2) == [6, 7]


def test_eval_contexts_get_the_bos_once(bos_tokenizer) -> None:
    from xgblora_cli.evaluation.scoring import context_ids
    from xgblora_cli.evaluation.tasks.choice import plain_question

    bos = bos_tokenizer.convert_tokens_to_ids("<s>")
    question = plain_question({"prompt": "Is the sky blue?", "choices": ["yes", "no"], "answer": 0})
    for template in ("chat", "plain"):
        fmt = PromptFormat.resolve(bos_tokenizer, template, 512)
        for labels in (True, False):
            ids = context_ids(bos_tokenizer, question, fmt, labels, reserve=4)
            assert ids[0] == bos and ids.count(bos) == 1, (template, labels)


def test_a_run_on_a_bos_tokenizer_trains_and_scores_with_the_bos_once(tmp_path) -> None:
    """End to end on a tiny model whose tokenizer adds a BOS: every training row starts with exactly one BOS that
    carries no label, the run stores the BOS in its prompt format, and eval scores in that format."""
    from tests.conftest import ROOT, save_tiny_model, tiny_recipe
    from xgblora_cli.evaluation.evaluate import EvalSettings, evaluate
    from xgblora_cli.recipe_file import recipe_from_dict
    from xgblora_cli.runner import prepare, start_run

    model_dir = save_tiny_model(tmp_path / "bos_model", bos=True)
    bos = make_tokenizer(chat=True, bos=True).convert_tokens_to_ids("<s>")
    recipe = recipe_from_dict(tiny_recipe(tmp_path, model_dir, steps_per_booster=2, train={"max_steps": 2}), "r.yaml")
    batch = prepare(recipe, "r.yaml").stream.batch(0)
    assert (batch.input_ids[:, 0] == bos).all() and ((batch.input_ids == bos).sum(dim=1) == 1).all()
    assert (batch.labels[:, 0] == IGNORE).all()
    run_dir = start_run(recipe, "r.yaml", progress=False)
    result = evaluate(str(run_dir), EvalSettings(tasks=["sst2"], data=str(ROOT / "data" / "sst2_dev.tsv"), limit=4))
    assert result["prompt_format"]["bos"] == [bos]


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Sky?"},
                {"role": "assistant", "content": "Blue"}]


def learned_text(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """The labelled runs of a sequence, decoded: what the loss covers, token for token."""
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs + ([tokenizer.decode(current)] if current else [])


def test_conversation_labels_cover_each_answer_and_its_end_of_turn_token(tokenizer) -> None:
    fmt = PromptFormat.resolve(tokenizer, "chat", 512)
    ids, labels = fmt.encode_conversation(tokenizer, CONVERSATION)
    text = "".join(piece for piece, _ in fmt.conversation(tokenizer, CONVERSATION))
    assert tokenizer.decode(ids) == text == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert learned_text(tokenizer, ids, labels) == ["Hello<|im_end|>", "Blue<|im_end|>"]  # not the newline, not a header
    everything = PromptFormat.resolve(tokenizer, "chat", 512, train_on_inputs=True).encode_conversation(tokenizer, CONVERSATION)
    assert everything == (ids, ids)


def test_conversation_labels_in_the_plain_template() -> None:
    plain = make_tokenizer(chat=False)
    fmt = PromptFormat.resolve(plain, "plain", 512)
    ids, labels = fmt.encode_conversation(plain, CONVERSATION)
    assert plain.decode(ids) == ("### System:\nBe brief.\n\n### Instruction:\nHi\n\n### Response:\nHello<|im_end|>"
                                 "\n\n### Instruction:\nSky?\n\n### Response:\nBlue<|im_end|>")
    assert learned_text(plain, ids, labels) == ["Hello<|im_end|>", "Blue<|im_end|>"]


def test_a_long_conversation_drops_whole_early_exchanges_and_keeps_the_system_turn(tokenizer) -> None:
    long = [CONVERSATION[0]] + [turn for i in range(6) for turn in (
        {"role": "user", "content": f"question {i} " + "word " * 10}, {"role": "assistant", "content": f"answer {i}"})]
    full, _ = PromptFormat.resolve(tokenizer, "chat", 2048).encode_conversation(tokenizer, long)
    fmt = PromptFormat.resolve(tokenizer, "chat", len(full) - 10)
    ids, labels = fmt.encode_conversation(tokenizer, long)
    text = tokenizer.decode(ids)
    assert len(ids) <= fmt.max_len and text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "question 0" not in text and "question 5" in text  # the first exchange went whole
    assert learned_text(tokenizer, ids, labels)[-1] == "answer 5<|im_end|>"
    tiny = PromptFormat.resolve(tokenizer, "chat", 16)  # not even the last exchange fits: cut like one answer
    ids, labels = tiny.encode_conversation(tokenizer, long)
    assert len(ids) == 16 and learned_text(tokenizer, ids, labels) == ["answer 5<|im_end|>"]
