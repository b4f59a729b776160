"""`xgblora export --format peft`: the exact adapter loads in PEFT and gives the merged model's logits; a truncated
one keeps what a direct SVD says it can; refusals are one line and write nothing. The run ends on its tail average
(``average_last``), so the record's last entry is the one whose factors are other boosters' scaled copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TRAIN_DATA, run_cli, tiny_recipe
from xgblora_cli.common.errors import UserError
from xgblora_cli.core.merge import FactorStack
from xgblora_cli.core.record import Record
from xgblora_cli.data.batches import BatchStream
from xgblora_cli.data.formats import load_records
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.export.merged_folder import merge_run
from xgblora_cli.export.peft_adapter import best_rank, export_peft
from xgblora_cli.models.loading import load_tokenizer
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import start_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model_dir: Path) -> Path:
    tmp = tmp_path_factory.mktemp("peft")
    fields = tiny_recipe(tmp, tiny_model_dir, rank=2, layers_per_booster=2, steps_per_booster=2, average_last=3,
                         train={"max_steps": 8, "learning_rate": 3e-2})
    return start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)


def logits(model, model_dir: Path) -> torch.Tensor:
    batch = BatchStream(load_tokenizer(model_dir), load_records(str(TRAIN_DATA)), 2, PromptFormat("chat", (), 64), 0).batch(0)
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def peft_logits(base_dir: Path, adapter: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter)
    return logits(model.eval(), base_dir)


def test_the_exact_adapter_in_peft_equals_the_merged_model(run_dir: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    summary = export_peft(run_dir, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == summary["rank"] and config["rank_pattern"] == {}
    assert sorted(config["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    stack = FactorStack()
    record = Record(run_dir).load()
    assert [b.index for b in record] == [0, 1, 2, 3, 4]  # 4 boosters of 2 steps, then the mean of the last 3 ends
    for booster in record:
        stack.add(booster)
    stacked_rank = max(stack.stacked(name, torch.float32)[1].shape[0] for name in stack.factors)  # every booster's rank
    assert summary["rank"] == stacked_rank > max(len(pairs) for pairs in stack.factors.values()) > 1  # rank-2 boosters, zero-padded
    merge_run(run_dir, tmp_path / "merged")
    merged = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged"), tiny_model_dir)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tiny_model_dir)
    adapted = peft_logits(tiny_model_dir, tmp_path / "adapter")
    assert (merged - base).abs().max() > 1e-3  # the run changed the model
    assert (adapted - merged).abs().max() <= 1e-4


def test_best_rank_keeps_what_a_direct_svd_says() -> None:
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(40, 9, generator=g, dtype=torch.float64), torch.randn(9, 30, generator=g, dtype=torch.float64)
    singular = torch.linalg.svdvals(u @ v)
    for rank in (1, 3, 9, 12):
        new_u, new_v, kept, total = best_rank(u, v, rank)
        assert new_u.shape[1] == min(rank, 9) and kept == pytest.approx(float((singular[:rank] ** 2).sum()), rel=1e-9)
        assert total == pytest.approx(float((singular**2).sum()), rel=1e-9)
        direct = torch.linalg.matrix_norm(u @ v - new_u @ new_v) ** 2  # Eckart-Young: the rest of the spectrum
        assert float(direct) == pytest.approx(float((singular[rank:] ** 2).sum()), abs=1e-8 * total)


def test_a_truncated_export_reports_what_it_kept_and_loads(run_dir: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    summary = export_peft(run_dir, tmp_path / "r1", rank=1)
    assert summary["rank"] == 1 and 0 < summary["kept_worst"] <= summary["kept_overall"] < 1
    assert json.loads((tmp_path / "r1" / "adapter_config.json").read_text())["r"] == 1
    peft_logits(tiny_model_dir, tmp_path / "r1")  # loads and runs


def test_refusals_are_one_line_and_write_nothing(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--rank: must be >= 1, got 0"):
        export_peft(run_dir, tmp_path / "a", rank=0)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists; pass --force"):
        export_peft(run_dir, tmp_path / "taken")
    with pytest.raises(UserError, match="not written by xgblora export; --force replaces only xgblora's own"):
        export_peft(run_dir, tmp_path / "taken", force=True)
    assert not (tmp_path / "a").exists() and [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    result = run_cli("export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "b"))
    assert result.returncode == 2 and "--format: must be peft or gguf" in result.stderr and not (tmp_path / "b").exists()
