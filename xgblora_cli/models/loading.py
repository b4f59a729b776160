"""Loading a model folder (see :mod:`xgblora_cli.models.sources`) as a frozen causal LM, its tokenizer or a shape-only
skeleton, and finding its list of transformer blocks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from xgblora_cli.common.errors import UserError, first_line
from xgblora_cli.models.quantized import bnb_config, keep_standard_layout


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a recipe's ``dtype`` name (``float32``, ``bfloat16``, ``float16``)."""
    return getattr(torch, name)


def quiet_transformers() -> None:
    """Silence transformers' per-tensor progress bars and info logs; our own display reports progress."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _remote_hint(err: Exception) -> str:
    text = str(err)
    if "custom code" in text or "trust_remote_code" in text:
        return " (it ships its own Python code, refused unless the recipe sets trust_remote_code: true)"
    return ""


def load_model(
    model_dir: Path, dtype: str, device: torch.device | str = "cpu", trust_remote_code: bool = False, quantization: str = "none",
) -> nn.Module:
    """The causal LM in ``model_dir`` on ``device`` with every base parameter frozen.

    ``quantization`` ``4bit``/``8bit`` quantizes the blocks' linear layers with bitsandbytes while loading
    (``dtype`` is then the compute dtype); the files in ``model_dir`` stay the unquantized original.
    """
    from transformers import AutoModelForCausalLM


    quiet_transformers()
    quantized = bnb_config(quantization, torch_dtype(dtype))
    extra = {} if quantized is None else {"quantization_config": quantized, "device_map": {"": torch.device(device)}}
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code, **extra)
    except Exception as err:
        raise UserError(f"model '{model_dir}': could not be loaded{_remote_hint(err)}: {first_line(err)}") from None
    model.requires_grad_(False)
    model.config.use_cache = False
    if quantized is None:
        return model.to(device)
    keep_standard_layout(model)
    return model


def load_config(model_dir: Path, trust_remote_code: bool = False):  # -> transformers.PretrainedConfig
    """The model's ``config.json`` as a transformers config (no weights read)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise UserError(f"model '{model_dir}': could not read its config{_remote_hint(err)}: {first_line(err)}") from None


def load_skeleton(model_dir: Path, trust_remote_code: bool = False) -> nn.Module:
    """The model's modules with shapes but no data (meta device): for plans and dry runs."""
    from transformers import AutoModelForCausalLM

    config = load_config(model_dir, trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def load_tokenizer(model_dir: Path, trust_remote_code: bool = False):  # -> transformers.PreTrainedTokenizerBase
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise UserError(f"model '{model_dir}': could not load its tokenizer{_remote_hint(err)}: {first_line(err)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (the ``ModuleList`` as long as ``num_hidden_layers``)."""
    depth = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise UserError(f"model '{model.config.name_or_path}': no list of {depth} transformer blocks found")


