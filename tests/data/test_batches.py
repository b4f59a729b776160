"""Training data: formats, templates, response-only loss masks, truncation, a seeded resumable order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TRAIN_DATA, make_tokenizer
from xgblora_cli.common.errors import UserError
from xgblora_cli.data.batches import BatchStream, collate
from xgblora_cli.data.formats import load_records
from xgblora_cli.data.prompts import PromptFormat

RECORD = {"instruction": "Name a colour.", "input": "Be brief.", "output": "Blue is a colour."}


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(chat=True)


def test_json_and_jsonl_give_the_same_records(tmp_path: Path) -> None:
    rows = [RECORD, {"instruction": "Say hi.", "output": "hi"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert load_records(str(tmp_path / "a.json")) == load_records(str(tmp_path / "a.jsonl"))
    assert load_records(str(tmp_path / "a.json"))[1]["input"] == ""
    assert len(load_records(str(TRAIN_DATA))) == 600


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "no records"),
        ('[{"instruction": "x"}]', "record 1 has no string field 'output'"),
        ('[{"instruction": "x", "output": "y", "input": 3}]', "record 1 field 'input' must be a string"),
        ('{"a": 1}', "expected a JSON list of records"),
        ("[{", "not valid JSON"),
    ],
)
def test_bad_datasets_are_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_records(str(path))


def test_missing_file_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="file not found"):
        load_records(str(tmp_path / "nope.jsonl"))


def test_order_is_seeded_by_epoch_and_resumable(tokenizer) -> None:
    records = load_records(str(TRAIN_DATA))[:10]
    a = BatchStream(tokenizer, records, 3, PromptFormat("chat", (), 64), seed=1)
    b = BatchStream(tokenizer, records, 3, PromptFormat("chat", (), 64), seed=1)
    later = b.batch(7)  # a resumed run asks for micro-batch 7 first
    for m in range(8):
        batch = a.batch(m)
    assert (batch.input_ids == later.input_ids).all() and (batch.labels == later.labels).all()
    epoch0 = [a.example(p) for p in range(10)]
    epoch1 = [a.example(p) for p in range(10, 20)]
    assert sorted(map(str, epoch0)) == sorted(map(str, epoch1))  # each epoch covers every record once
    assert epoch0 != epoch1  # in a different order
    assert batch.attention_mask.sum() == batch.num_tokens


def test_hub_dataset_names_go_through_datasets(monkeypatch) -> None:
    import datasets

    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return [{"instruction": "Say hi.", "input": None, "output": "hi", "extra": 1}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert load_records("vicgalle/alpaca-gpt4", "train") == [{"instruction": "Say hi.", "input": "", "output": "hi"}]
    assert calls == [("vicgalle/alpaca-gpt4", "train")]


def test_the_encoding_cache_is_bounded_and_changes_nothing(tokenizer) -> None:
    records = load_records(str(TRAIN_DATA))[:30]
    fmt = PromptFormat("chat", (), 64)
    small = BatchStream(tokenizer, records, 3, fmt, seed=1, cache_size=4)
    unbounded = BatchStream(tokenizer, records, 3, fmt, seed=1, cache_size=10**6)
    for m in range(25):  # 75 positions: every record, twice and more
        a, b = small.batch(m), unbounded.batch(m)
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert len(small._encoded) == 4 and len(unbounded._encoded) == 30


def test_pack_epoch_fills_rows_in_order_without_splitting() -> None:
    from xgblora_cli.data.packing import pack_epoch

    assert pack_epoch([3, 4, 2, 5, 1], [10, 11, 12, 13, 14], 8) == [[10, 11], [12, 13, 14]]
    assert pack_epoch([8, 1], [0, 1], 8) == [[0], [1]]
    with pytest.raises(ValueError, match="more than a packed row's 8"):
        pack_epoch([9], [0], 8)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_batch_has_the_loss_of_the_same_examples_unpacked(tiny_model_dir, attention: str) -> None:
    """Same examples, same labelled tokens, same summed loss: nothing leaks between examples sharing a row."""
    from xgblora_cli.core.loss import causal_lm_loss
    from xgblora_cli.models.loading import load_model

    model = load_model(tiny_model_dir, "float32")
    model.config._attn_implementation = attention
    tokenizer = make_tokenizer(chat=True)
    records = load_records(str(ROOT / "data" / "sst2_train_2000.jsonl"))[:40]
    fmt = PromptFormat("chat", (), 512)
    packed = BatchStream(tokenizer, records, 3, fmt, seed=2, packing=True)
    batch = packed.batch(1)
    examples = [i for r in range(3, 6) for i in packed.row(r)]
    assert len(examples) > 6 and batch.position_ids is not None  # rows hold several examples
    unpacked = collate([packed.encoded(i) for i in examples], tokenizer.pad_token_id)
    with torch.no_grad():
        loss_p, count_p = causal_lm_loss(model, batch)
        loss_u, count_u = causal_lm_loss(model, unpacked)
    assert count_p == count_u and batch.num_tokens == unpacked.num_tokens
    assert float(loss_p) == pytest.approx(float(loss_u), rel=1e-5)
