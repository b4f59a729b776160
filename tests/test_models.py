"""Model specs: local folders, missing paths, pickle-only folders, unreachable hub ids, meta skeletons."""

from __future__ import annotations

from pathlib import Path

import pytest

from xgblora_cli.errors import UserError
from xgblora_cli.models import BaseWeights, find_blocks, load_skeleton, resolve_model_dir


def test_a_local_folder_resolves_to_itself(tiny_model_dir: Path) -> None:
    assert resolve_model_dir(str(tiny_model_dir)) == tiny_model_dir


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "has no config.json"),
        (lambda d: (d / "config.json").write_text("{}") or (d / "pytorch_model.bin").write_bytes(b"x"), "no .safetensors weights"),
    ],
)
def test_bad_folders_are_named(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    with pytest.raises(UserError, match=message):
        resolve_model_dir(str(tmp_path))


def test_missing_paths_and_gguf_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="GGUF file not found"):
        resolve_model_dir(str(tmp_path / "x.gguf"))
    with pytest.raises(UserError, match="not found; expected a local Hugging Face folder"):
        resolve_model_dir(str(tmp_path / "nothing"))


def test_hub_ids_go_to_the_hub_and_fail_in_one_line(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        resolve_model_dir("meta-llama/Meta-Llama-3-8B")
    assert "hub could not provide it" in str(info.value) and "\n" not in str(info.value)


def test_skeleton_has_shapes_but_no_data(tiny_model_dir: Path) -> None:
    model = load_skeleton(tiny_model_dir)
    assert len(find_blocks(model)) == 4
    assert all(p.is_meta for p in model.parameters())


def test_base_weights_reads_tensors_by_name(tiny_model_dir: Path) -> None:
    base = BaseWeights(tiny_model_dir)
    assert "model.layers.0.self_attn.q_proj.weight" in base
    assert tuple(base.get("model.layers.0.self_attn.q_proj.weight").shape) == (32, 32)
    with pytest.raises(KeyError):
        base.get("nope")
