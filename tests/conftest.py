"""Shared fixtures: a tiny random LLaMA with a real (small, trained here) BPE tokenizer, and the real SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN_DATA = ROOT / "data" / "arc_easy_train_600.jsonl"
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_tokenizer(chat: bool = True, bos: bool = False):
    """A byte-level BPE tokenizer (vocab 400) trained on the shipped ARC-Easy slice.

    ``bos``: like LLaMA-3's, it puts ``<s>`` in front of every sequence (its post-processor), and its chat
    template writes ``<s>`` into the text itself.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    texts = [json.loads(line)["instruction"] for line in TRAIN_DATA.read_text().splitlines()[:200]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (["<s>"] if bos else [])
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    extra = {}
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        extra = {"bos_token": "<s>"}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", **extra)
    if chat:
        fast.chat_template = ("{{ bos_token }}" if bos else "") + CHATML
    return fast


def save_tiny_model(folder: Path, layers: int = 4, chat: bool = True, seed: int = 0, hidden: int = 32, bos: bool = False) -> Path:
    """A random LLaMA (``hidden`` wide, ``layers`` blocks) saved as a Hugging Face folder with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(chat, bos)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once into the user cache (about 30 s the first time)."""
    from xgblora_cli.models.sources import resolve_model_dir

    return resolve_model_dir("smollm2-135m")


def write_recipe(path: Path, **fields) -> Path:
    """Write a YAML recipe; nested dicts become blocks."""
    import yaml

    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


def tiny_recipe(tmp_path: Path, model_dir: Path, **overrides) -> dict:
    recipe = {
        "model": str(model_dir),
        "dataset": str(TRAIN_DATA),
        "output_dir": str(tmp_path / "run"),
        "method": "xgblora",
        "layers_per_booster": 2,
        "steps_per_booster": 3,
        "seed": 0,
        "train": {"max_steps": 8, "batch_size": 2, "learning_rate": 1e-2, "max_seq_len": 64, "checkpoint_every": 2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            recipe.setdefault(key, {}).update(value)
        else:
            recipe[key] = value
    return recipe


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m xgblora_cli ARGS`` in a fresh process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "xgblora_cli", *args], capture_output=True, text=True, env=full_env, cwd=cwd or ROOT)


def train_in_memory(recipe_dict: dict, ranks=None, info: dict | None = None, setup_hook=None):
    """Train a recipe through the runner's pieces and return ``(setup, run)`` with the trained model in memory.

    ``ranks``: this process's data-parallel place (default one process); rank 0 creates the run directory with
    ``info`` as its run.json (default: the model folder, fp32) and the recipe; ``setup_hook(setup)`` may change
    the setup before training (e.g. a stand-in for the collectives).
    """
    from xgblora_cli.common.runtime import SINGLE
    from xgblora_cli.core.rundir import RunDir
    from xgblora_cli.core.train import Trainer
    from xgblora_cli.recipe_file import recipe_from_dict, recipe_to_yaml
    from xgblora_cli.runner import prepare

    ranks = ranks or SINGLE
    recipe = recipe_from_dict(recipe_dict, "r.yaml")
    setup = prepare(recipe, "r.yaml", ranks)
    if setup_hook is not None:
        setup_hook(setup)
    run = RunDir(recipe.output_dir)
    if ranks.main:
        run.create(recipe_to_yaml(recipe), info or {"model_dir": str(setup.model_dir), "dtype": recipe.dtype}, overwrite=False)
    ranks.barrier()
    Trainer(setup, run, show_progress=False).fit()
    return setup, run
