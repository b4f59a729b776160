"""Model specs: local folders, missing paths, pickle-only folders, unreachable hub ids, meta skeletons."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

from xgblora_cli.common.errors import UserError
from xgblora_cli.models.base_weights import BaseWeights
from xgblora_cli.models.loading import find_blocks, load_model, load_skeleton
from xgblora_cli.models import sources
from xgblora_cli.models.sources import resolve_model_dir


def test_a_local_folder_resolves_to_itself(tiny_model_dir: Path) -> None:
    assert resolve_model_dir(str(tiny_model_dir)) == tiny_model_dir


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "has no config.json"),
        (lambda d: ((d / "config.json").write_text("{}"), (d / "pytorch_model.bin").write_bytes(b"x")), "refused unless the recipe sets allow_pickle: true"),
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


def pickle_copy(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model saved with pickle weights only (``pytorch_model.bin``)."""
    from safetensors.torch import load_file

    shutil.copytree(tiny_model_dir, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(tiny_model_dir / "model.safetensors"), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return folder


def test_pickle_weights_are_converted_once_only_when_allowed(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("XGBLORA_CACHE", str(tmp_path / "cache"))
    src = pickle_copy(tiny_model_dir, tmp_path / "pickled")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in src.iterdir())
    with pytest.raises(UserError, match="pytorch_model.bin"):
        resolve_model_dir(str(src))
    assert not (tmp_path / "cache").exists()  # nothing was unpickled or written
    converted = resolve_model_dir(str(src), allow_pickle=True)
    assert converted.parent == tmp_path / "cache" / "pickle" and list(converted.glob("*.safetensors"))
    assert resolve_model_dir(str(src), allow_pickle=True) == converted  # reused, not converted again
    assert sorted((p.name, p.stat().st_mtime_ns) for p in src.iterdir()) == before  # the source is untouched
    a, b = load_model(tiny_model_dir, "float32"), load_model(converted, "float32")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_runs_started_side_by_side_convert_once_and_all_load(tmp_path: Path, tiny_model_dir: Path, monkeypatch, capfd) -> None:
    """Two runs launched at once on a fresh cache: one converts, the other waits for it and reuses the folder
    (before the lock, both converted and the second replaced the folder while the first was loading it)."""
    monkeypatch.setenv("XGBLORA_CACHE", str(tmp_path / "cache"))
    src = pickle_copy(tiny_model_dir, tmp_path / "pickled")
    calls: list[Path] = []
    convert = sources.convert_pickle

    def slow_convert(folder: Path, out: Path, trust_remote_code: bool) -> Path:
        calls.append(out)
        time.sleep(0.5)  # long enough for the other thread to arrive while this one converts
        return convert(folder, out, trust_remote_code)

    monkeypatch.setattr(sources, "convert_pickle", slow_convert)
    found: list[Path] = []
    threads = [threading.Thread(target=lambda: found.append(resolve_model_dir(str(src), allow_pickle=True))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(found) == 2 and found[0] == found[1] == calls[0]
    assert (found[0] / "config.json").is_file() and list(found[0].glob("*.safetensors"))
    assert "waiting for another xgblora process to finish converting" in capfd.readouterr().err


def test_an_unwritable_cache_is_one_line_naming_it(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("XGBLORA_CACHE", str(tmp_path / "file" / "cache"))
    src = pickle_copy(tiny_model_dir, tmp_path / "pickled")
    with pytest.raises(UserError, match=r"cache folder .*file/cache/pickle \(XGBLORA_CACHE moves it\) cannot be written"):
        resolve_model_dir(str(src), allow_pickle=True)


CUSTOM_CONFIG = """
import os
from pathlib import Path
from transformers import LlamaConfig
Path(os.environ["XGBLORA_TEST_MARKER"]).write_text("remote code ran")

class CustomConfig(LlamaConfig):
    model_type = "xgblora-custom"
"""
CUSTOM_MODEL = """
from transformers import LlamaForCausalLM
from .configuration_custom import CustomConfig

class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def remote_code_folder(tiny_model_dir: Path, folder: Path) -> Path:
    """A copy of the tiny model whose config.json points at Python code shipped in the folder."""
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="xgblora-custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                             "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(CUSTOM_CONFIG)
    (folder / "modeling_custom.py").write_text(CUSTOM_MODEL)
    return folder


def test_remote_code_runs_only_when_the_recipe_trusts_it(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    marker = tmp_path / "ran"
    monkeypatch.setenv("XGBLORA_TEST_MARKER", str(marker))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    folder = remote_code_folder(tiny_model_dir, tmp_path / "custom")
    with pytest.raises(UserError, match="trust_remote_code"):
        load_skeleton(folder)
    with pytest.raises(UserError, match="trust_remote_code"):
        load_model(folder, "float32")
    assert not marker.exists()
    model = load_model(folder, "float32", trust_remote_code=True)
    assert type(model).__name__ == "CustomForCausalLM" and marker.read_text() == "remote code ran"
