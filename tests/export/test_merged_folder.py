"""`merge`: a loadable Hugging Face folder, logits equal to the trained model, only touched weights differ,
the base folder untouched, an existing --out protected."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TRAIN_DATA, tiny_recipe
from xgblora_cli.common.errors import UserError
from xgblora_cli.core.record import Record
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.core.train import Trainer
from xgblora_cli.data.batches import BatchStream
from xgblora_cli.data.formats import load_records
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.export.merged_folder import merge_run
from xgblora_cli.models.loading import load_tokenizer
from xgblora_cli.recipe_file import recipe_from_dict, recipe_to_yaml
from xgblora_cli.runner import prepare


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir: Path):
    """A finished tiny run, and the trained in-memory model it ended with."""
    tmp = tmp_path_factory.mktemp("export")
    base_digest = folder_digest(tiny_model_dir)
    recipe = recipe_from_dict(tiny_recipe(tmp, tiny_model_dir, layers_per_booster=1, steps_per_booster=2,
                                          train={"max_steps": 4}), "r.yaml")
    setup = prepare(recipe, "r.yaml")
    run = RunDir(recipe.output_dir)
    run.create(recipe_to_yaml(recipe), {"model_dir": str(tiny_model_dir), "dtype": "float32"}, overwrite=False)
    Trainer(setup, run, show_progress=False).fit()
    return run.path, setup.model, base_digest


def test_merged_folder_loads_and_matches_the_trained_model(trained, tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    run_dir, model, _ = trained
    out = tmp_path / "merged"
    merge_run(run_dir, out)
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    batch = BatchStream(load_tokenizer(out), load_records(str(TRAIN_DATA)), 2, PromptFormat("chat", (), 64), 0).batch(0)
    device = next(model.parameters()).device  # the trained model stays where it trained (a GPU, where there is one)
    batch, loaded = batch.to(device), loaded.to(device)
    with torch.no_grad():
        ours = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        theirs = loaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_only_target_projections_of_touched_blocks_differ(trained, tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir, _, _ = trained
    out = tmp_path / "merged"
    merge_run(run_dir, out)
    base = load_file(tiny_model_dir / "model.safetensors")
    merged = load_file(out / "model.safetensors")
    assert set(base) == set(merged)
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    touched_blocks = {b for booster in Record(run_dir).load() for b in booster.blocks}
    expected = {f"model.layers.{b}.{part}.weight" for b in touched_blocks for part in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert changed == expected and len(touched_blocks) >= 1


def test_base_folder_is_never_written(trained, tmp_path: Path, tiny_model_dir: Path) -> None:
    run_dir, _, digest_before = trained
    merge_run(run_dir, tmp_path / "m")
    assert folder_digest(tiny_model_dir) == digest_before


def test_existing_out_needs_force_and_bfloat16_export_rounds_once(trained, tmp_path: Path) -> None:
    run_dir, _, _ = trained
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists; pass --force to replace it"):
        merge_run(run_dir, out)
    with pytest.raises(UserError, match="was not written by xgblora merge; --force replaces only xgblora's own"):
        merge_run(run_dir, out, force=True)  # a folder xgblora did not write is never replaced
    assert (out / "keep.txt").read_text() == "mine"
    out = tmp_path / "merged"
    merge_run(run_dir, out)
    merge_run(run_dir, out, force=True, dtype="bfloat16")  # our own merge: replaced
    tensors = load_file(out / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    fp32 = tmp_path / "fp32"
    merge_run(run_dir, fp32)
    reference = load_file(fp32 / "model.safetensors")
    for name, tensor in tensors.items():
        assert torch.equal(tensor, reference[name].to(torch.bfloat16)), name


def test_merge_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a run directory"):
        merge_run(tmp_path, tmp_path / "out")
