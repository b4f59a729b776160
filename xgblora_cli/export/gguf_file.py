"""``xgblora export RUN --format gguf``: the merged model as one GGUF file for llama.cpp / Ollama (LLaMA architecture).

The run's exact merged weights (base + record, as ``xgblora merge`` writes them) are laid out the way llama.cpp's
own converter does for LLaMA: its tensor names (``blk.N.attn_q.weight``, ...), the query and key projections
permuted from Hugging Face's rotary layout to llama.cpp's (``permute``), norms in F32, the 2-D weights in the
chosen type (``f16``, ``bf16`` or ``q8_0``, through the ``gguf`` package's own quantizer); the hyperparameters
from ``config.json``; the tokenizer's byte-level BPE vocabulary, merges, token types and special tokens, and its
chat template. The file is written beside ``--out`` and renamed into place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from xgblora_cli import __version__
from xgblora_cli.common.errors import UserError
from xgblora_cli.common.outputs import check_replace
from xgblora_cli.core.opening import open_target
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.data.prompts import bos_ids
from xgblora_cli.models.loading import load_config

GGUF_DTYPES = ("f16", "bf16", "q8_0")
MARKER_KEY = "xgblora.version"  # in the file's metadata: what --force looks for before replacing it
BLOCK_TENSORS = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}
TOP_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Hugging Face's rotary layout of a query/key projection (d_out, d_in) -> llama.cpp's (interleaved halves)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_name(name: str) -> str | None:
    """The llama.cpp tensor name of a Hugging Face LLaMA parameter (None: not exported, e.g. rotary buffers)."""
    if name in TOP_TENSORS:
        return TOP_TENSORS[name]
    parts = name.split(".")
    if len(parts) >= 5 and parts[:2] == ["model", "layers"] and parts[-1] == "weight":
        inner = ".".join(parts[3:-1])
        if inner in BLOCK_TENSORS:
            return f"blk.{parts[2]}.{BLOCK_TENSORS[inner]}.weight"
    return None


def tensor_data(tensor: torch.Tensor, dtype: str):  # -> (numpy array, gguf.GGMLQuantizationType | None)
    """A tensor in the file's type: 1-D (norms) in F32; 2-D in ``dtype`` (Q8_0 needs rows of a multiple of 32)."""
    import gguf

    data = tensor.detach().to(torch.float32).cpu().numpy()
    if data.ndim == 1:
        return data, None
    if dtype == "f16":
        return data.astype(np.float16), None
    kind = gguf.GGMLQuantizationType.BF16 if dtype == "bf16" else gguf.GGMLQuantizationType.Q8_0
    if kind == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, kind), kind


def add_tokenizer(writer, tokenizer, vocab_size: int, pre: str) -> None:
    """The byte-level BPE vocabulary (padded to the model's size), merges, token types, special ids, template."""
    import gguf

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE" or spec["model"].get("byte_fallback"):
        raise UserError("--format gguf: only byte-level BPE tokenizers (LLaMA-3, SmolLM2, GPT-2 style) are supported; "
                        f"this one is {spec['model']['type']}{' with byte fallback' if spec['model'].get('byte_fallback') else ''}")
    tokens = {index: token for token, index in spec["model"]["vocab"].items()}
    types = {index: gguf.TokenType.NORMAL for index in tokens}
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    size = max(vocab_size, max(tokens) + 1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list([tokens.get(i, f"[PAD{i}]") for i in range(size)])
    writer.add_token_types([types.get(i, gguf.TokenType.UNUSED) for i in range(size)])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]])
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id), (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.unk_token_id, writer.add_unk_token_id), (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(bool(bos_ids(tokenizer)))
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def pre_tokenizer_name(base_dir: Path, vocab_size: int) -> str:
    """llama.cpp's pre-tokenizer name: the source GGUF's when the base was converted from one, else by vocabulary."""
    source = base_dir / "xgblora_source.json"
    if source.is_file() and "gguf" in json.loads(source.read_text()):
        from gguf import GGUFReader

        field = GGUFReader(json.loads(source.read_text())["gguf"]).fields.get("tokenizer.ggml.pre")
        if field is not None:
            return field.contents()
    return "llama-bpe" if vocab_size == 128256 else "default"


def add_hyperparameters(writer, config, dtype: str) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(getattr(config, "_name_or_path", "") and Path(config._name_or_path).name or "xgblora")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", heads))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta") or getattr(config, "rope_theta", 10000.0)
    writer.add_rope_freq_base(float(theta))
    writer.add_vocab_size(config.vocab_size)
    file_types = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_types[dtype])
    writer.add_string(MARKER_KEY, __version__)


def written_by_xgblora(path: Path) -> bool:
    """Whether ``path`` is a GGUF file this exporter wrote (its metadata carries ``MARKER_KEY``)."""
    import gguf

    try:
        return MARKER_KEY in gguf.GGUFReader(str(path)).fields
    except Exception:  # not a GGUF file at all
        return False


def export_gguf(run_dir: Path, out: Path, dtype: str = "f16", force: bool = False) -> dict:
    """Write the merged model of ``run_dir`` as the GGUF file ``out``; returns a summary (tensors, bytes)."""
    import gguf

    if dtype not in GGUF_DTYPES:
        raise UserError(f"--dtype: must be one of {', '.join(GGUF_DTYPES)} for --format gguf, got {dtype!r}")
    if out.suffix != ".gguf":
        raise UserError(f"--out {out}: a GGUF file name ending in .gguf")
    check_replace(out, force, written_by_xgblora, "--out", "xgblora export")
    run = RunDir(run_dir)
    base_dir = run.base_dir()
    recipe = run.recipe()
    config = load_config(base_dir, recipe.trust_remote_code)
    if config.model_type != "llama":
        raise UserError(f"--format gguf: LLaMA-architecture models only (model_type llama); this one is {config.model_type!r}")
    opened = open_target(run.path, dtype="float32" if recipe.dtype == "float32" else "bfloat16", device="cpu",
                         quantization="none")
    model, tokenizer = opened.model, opened.tokenizer
    kv_heads = getattr(config, "num_key_value_heads", config.num_attention_heads)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        add_hyperparameters(writer, config, dtype)
        add_tokenizer(writer, tokenizer, config.vocab_size, pre_tokenizer_name(base_dir, config.vocab_size))
        count = 0
        state = model.state_dict()
        for name, tensor in state.items():
            target = gguf_name(name)
            if target is None or (target == "output.weight" and config.tie_word_embeddings):
                continue
            if target.endswith("attn_q.weight"):
                tensor = permute(tensor, config.num_attention_heads)
            elif target.endswith("attn_k.weight"):
                tensor = permute(tensor, kv_heads)
            data, kind = tensor_data(tensor, dtype)
            writer.add_tensor(target, data, raw_dtype=kind)
            count += 1
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"tensors": count, "bytes": out.stat().st_size, "dtype": dtype}
