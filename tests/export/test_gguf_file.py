"""`xgblora export --format gguf`: read back by transformers' own GGUF loader (code we did not write), the file gives
the merged model's logits within the tolerance of its type, and the same tokens."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TRAIN_DATA, tiny_recipe
from xgblora_cli.common.errors import UserError
from xgblora_cli.data.batches import BatchStream
from xgblora_cli.data.formats import load_records
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.export.gguf_file import export_gguf, permute
from xgblora_cli.export.merged_folder import merge_run
from xgblora_cli.models.loading import load_tokenizer
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import start_run


@pytest.fixture(scope="module")
def run_and_merged(tmp_path_factory, tiny_model_dir: Path) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("gguf")
    fields = tiny_recipe(tmp, tiny_model_dir, layers_per_booster=2, steps_per_booster=2, train={"max_steps": 6, "learning_rate": 3e-2})
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    merge_run(run_dir, tmp / "merged")
    return run_dir, tmp / "merged"


def logits(model, tokenizer_dir: Path) -> torch.Tensor:
    batch = BatchStream(load_tokenizer(tokenizer_dir), load_records(str(TRAIN_DATA)), 2, PromptFormat("chat", (), 64), 0).batch(0)
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()


def test_permute_matches_llama_cpp_interleaving() -> None:
    w = torch.arange(8 * 3).reshape(8, 3)  # 2 heads of 4 rows: rows (0 1 2 3) -> (0 2 1 3) within a head
    assert permute(w, 2)[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]


@pytest.mark.parametrize(("dtype", "tolerance"), [("f16", 2e-3), ("bf16", 2e-2), ("q8_0", 4e-2)])
def test_transformers_reads_the_file_back_as_the_merged_model(run_and_merged, tmp_path: Path, dtype: str, tolerance: float) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, merged_dir = run_and_merged
    out = tmp_path / f"model-{dtype}.gguf"
    summary = export_gguf(run_dir, out, dtype)
    assert summary["tensors"] == 1 + 1 + 4 * 9  # embeddings, final norm, 9 per block (the head is tied)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    ours, theirs = logits(merged, merged_dir), logits(loaded, merged_dir)
    assert (ours - theirs).abs().max() <= tolerance * ours.abs().max()
    # weight by weight (transformers undoes llama.cpp's query/key permutation): a layout error is O(1), not rounding
    loaded_state = loaded.state_dict()
    for name, value in merged.state_dict().items():
        assert (loaded_state[name] - value).abs().max() <= 4 * tolerance * value.abs().max() / 10, name
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    text = "<|im_start|>user\nWhich is a gas? steam, ice or wood<|im_end|>\n"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == load_tokenizer(merged_dir)(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.chat_template == load_tokenizer(merged_dir).chat_template


def test_refusals_write_nothing(run_and_merged, tmp_path: Path) -> None:
    run_dir, _ = run_and_merged
    with pytest.raises(UserError, match="--dtype: must be one of f16, bf16, q8_0"):
        export_gguf(run_dir, tmp_path / "m.gguf", "q4_k")
    with pytest.raises(UserError, match="ending in .gguf"):
        export_gguf(run_dir, tmp_path / "m.bin")
    (tmp_path / "m.gguf").write_text("mine")
    with pytest.raises(UserError, match="already exists; pass --force"):
        export_gguf(run_dir, tmp_path / "m.gguf")
    assert (tmp_path / "m.gguf").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
