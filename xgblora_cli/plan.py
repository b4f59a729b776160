"""``xgblora plan``: peak training memory of a recipe, by component, before anything is loaded.

The model is read as a meta-device skeleton (shapes only), so planning LLaMA3-8B needs its ``config.json``
and nothing else. The estimate is for one training process (one data-parallel rank) on its device:

- **weights**: every base parameter at the recipe's dtype; with ``quantization`` the blocks' linear layers
  at 4.127 bits (NF4 + double-quantized scales) or 8 bits + one fp32 scale per row; sharded (``train.sharding:
  fsdp``), 1/N of the blocks plus what is gathered whole (:func:`sharded_weight_bytes`).
- **adapters**: one booster's trainable parameters with their gradients and AdamW moments (16 bytes each).
- **record**: the factors of every merged booster, kept in fp32 for exact merges (host memory; on the device
  too when the base is quantized, see quantized.py).
- **activations**: tensors autograd saves, per token, for every block from the lowest adapted one up (the
  worst case, block 0, is assumed: random blocks reach it sooner or later), plus the adapted blocks' own
  inputs; with gradient checkpointing only each block's input plus one block's worth. The per-token
  coefficients were counted with ``torch.autograd.graph.saved_tensors_hooks`` on this implementation
  (LLaMA blocks, SDPA attention): a frozen block saves ``(8 + 2b) h + 3 b m + 2 b kv + 4 heads + 8`` bytes
  per token, an adapted one ``c h + 4 m + 28 r`` more (``c`` = 5 for fp32, 20.5 for 16-bit), where ``b`` is
  the dtype's bytes, ``kv`` the key/value width; plus a fitted ``8 h`` per adapted block (see below).
- **loss**: one chunk of fp32 logits (1,024 rows x vocabulary), turned into their own gradient in place
  (half a chunk more for a 16-bit head's matmul output), and the saved
  gradient for the hidden states. Full logits are never formed (loss.py).
- **transient**: the largest short-lived tensors of one block's backward (its MLP's gradients).
- **probe** (``booster_init: gradient``, ``block_schedule: gradient*``): what a booster's start needs beyond a
  training step. Its forward and backward keep the activations of every block from the lowest probed one up
  (block 0, the worst case) without any adapter, plus the flows of the adapted weights (their inputs, shared by
  the layers reading one tensor, and output gradients, in the model's dtype, over ``init_batches`` micro-batches)
  or, to rank blocks, an ``n x n`` fp32 Gram matrix per block input; it runs between steps, so only what it needs
  above the step's activations and adapters is added.
- **runtime**: the framework itself (CUDA context and kernels on a GPU; on a CPU it is not counted, see the
  test that checks the estimate).

On a CPU, glibc's malloc keeps freed memory resident under its dynamic mmap threshold, so the process's
resident peak can exceed these live bytes by a third; ``MALLOC_MMAP_THRESHOLD_=131072`` returns large freed
blocks to the system and is how ``benchmarks/plan_check.py`` measures. PyTorch's CUDA caching allocator reuses its
freed blocks, which is what the estimate assumes on a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from xgblora_cli.common.errors import UserError, first_line
from xgblora_cli.core.boosting import find_targets, plan_for, trainable_per_booster
from xgblora_cli.core.loss import CHUNK
from xgblora_cli.models.loading import find_blocks, load_skeleton
from xgblora_cli.models.quantized import linear_shape
from xgblora_cli.models.sources import ALIASES, resolve_model_dir
from xgblora_cli.recipe import DTYPE_BYTES, BoosterPlan, Recipe

CUDA_RUNTIME = int(0.75 * 2**30)  # CUDA context, cuBLAS workspaces, allocator slack (typical for torch 2.x)
GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """What memory depends on, read from a model skeleton."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_width: int  # key/value heads x head dim
    vocab: int
    params: int  # every base parameter (tied weights once)
    root_params: int  # parameters outside the blocks (embeddings, final norm, head): the root unit when sharded
    block_linear_params: int  # parameters of the blocks' linear layers (what quantization shrinks)
    block_linear_rows: int


def model_shape(model: nn.Module, blocks: nn.ModuleList) -> Shape:
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    linears = [m for block in blocks for m in block.modules() if isinstance(m, nn.Linear)]
    unique = {id(p): p.numel() for p in model.parameters()}
    return Shape(
        layers=len(blocks), hidden=config.hidden_size, intermediate=config.intermediate_size, heads=heads,
        kv_width=getattr(config, "num_key_value_heads", heads) * head_dim, vocab=config.vocab_size,
        params=sum(unique.values()),
        root_params=sum(unique.values()) - sum(p.numel() for block in blocks for p in block.parameters()),
        block_linear_params=sum(m.weight.numel() for m in linears),
        block_linear_rows=sum(linear_shape(m)[0] for m in linears),
    )


def frozen_block_bytes(s: Shape, b: int) -> float:
    """Saved-for-backward bytes per token of a block that gradients pass through (no adapter)."""
    return (8 + 2 * b) * s.hidden + 3 * b * s.intermediate + 2 * b * s.kv_width + 4 * s.heads + 8


def adapter_extra_bytes(s: Shape, b: int, rank: int) -> float:
    """Extra bytes per token of a block carrying adapters on all seven projections: what autograd saves
    (counted), plus 8 h for the adapter path's backward buffers (fitted to the resident-set checks of
    benchmarks/plan_check.py, where LoRA over all blocks otherwise came out 12-14% low)."""
    return (5.0 if b == 4 else 20.5) * s.hidden + 4 * s.intermediate + 28 * rank + 8 * s.hidden


def weight_bytes(s: Shape, b: int, quantization: str) -> int:
    if quantization == "4bit":
        quantized = s.block_linear_params * 4.127 / 8
    elif quantization == "8bit":
        quantized = s.block_linear_params + 4 * s.block_linear_rows
    else:
        return s.params * b
    return int(quantized + (s.params - s.block_linear_params) * b)


def record_bytes(plan: BoosterPlan, trainable: int) -> int:
    """The record's size: every booster's factors in fp32 (``trainable`` values per booster), and with
    ``average_last: N`` the tail average's entry (the factors of N - 1 boosters)."""
    return (plan.num_boosters + max(0, plan.average_last - 1)) * trainable * 4


def sharded_weight_bytes(s: Shape, b: int, world: int, quantization: str = "none") -> int:
    """Weights per rank with ``train.sharding: fsdp``: 1/world of every block, the root unit whole (the loss holds
    it gathered for the step), and two blocks gathered whole at a time (the one running and the next, prefetched).
    With ``quantization: 4bit`` a block's linear layers are NF4 codes (4.127 bits a value, gathered as codes) and
    one of them is dequantized at a time for its matmul (the largest: hidden x intermediate values)."""
    block_params = s.params - s.root_params
    if quantization == "4bit":
        block_bytes = s.block_linear_params * 4.127 / 8 + (block_params - s.block_linear_params) * b
        dequantized = s.hidden * s.intermediate * b
    else:
        block_bytes, dequantized = block_params * b, 0
    return int(block_bytes / world + s.root_params * b + 2 * block_bytes / s.layers * (world - 1) / world + dequantized)


def flow_bytes(s: Shape, b: int) -> tuple[float, float]:
    """Bytes per token of one adapted block's flows as the gradient probe keeps them: (X, the inputs of q/k/v, o,
    gate/up and down; Gy, the output gradients of all seven projections)."""
    return (3 * s.hidden + s.intermediate) * b, (3 * s.hidden + 2 * s.kv_width + 2 * s.intermediate) * b


def probe_bytes(plan: BoosterPlan, s: Shape, b: int, tokens: int, checkpointing: bool) -> int:
    """Bytes a booster's start holds at its peak besides what a step also holds (weights, loss, transient): the
    probe's activations (no adapter, from block 0 up) and its flows or Gram matrices (0 without a probe).

    The flows of ``init_batches`` micro-batches: X of every adapted block is held from its forward on, beside the
    saved activations. A block's Gy arrives in backward while the blocks above it have freed theirs, so in the
    last micro-batch it adds to the peak only where it is larger than a block's saved activations; earlier
    micro-batches' flows are held whole. With checkpointing, every flow is counted whole. Where V is set inside the
    booster's first step (``init_batches`` <= ``grad_accum``), the same flows sit beside that step's own
    activations instead of a probe pass's; the estimate is the same (measured in docs/gpus.md)."""
    if not plan.probes:
        return 0
    block = frozen_block_bytes(s, b)
    held = tokens * (s.layers * s.hidden * b + block if checkpointing else s.layers * block)
    if plan.booster_init == "gradient":
        x, gy = flow_bytes(s, b)
        n, k = plan.init_batches, plan.layers_per_booster
        last_gy = gy if checkpointing else max(0.0, gy - block)
        held += k * tokens * (n * x + (n - 1) * gy + last_gy)
    if plan.probes_blocks:  # an n x n fp32 Gram per block input (4 a block), all blocks at once
        held += 4 * s.layers * tokens * tokens * 4
    return int(held)


def estimate(recipe: Recipe, plan: BoosterPlan, s: Shape, trainable: int, device: str, world: int = 1) -> dict:
    """Peak bytes by component, their sum and the inputs used, as a JSON-ready dict (for one of ``world`` ranks)."""
    b = DTYPE_BYTES[recipe.dtype]
    args = recipe.train
    tokens = (args.batch_size // world) * args.max_seq_len  # one micro-batch, padded to the longest
    k = plan.layers_per_booster
    if args.gradient_checkpointing:
        saved = s.layers * s.hidden * b + frozen_block_bytes(s, b) + adapter_extra_bytes(s, b, plan.rank)
    else:
        saved = s.layers * frozen_block_bytes(s, b) + k * adapter_extra_bytes(s, b, plan.rank)
    record = record_bytes(plan, trainable)
    activations = int(tokens * saved)
    on_device = recipe.quantization != "none" or not device.startswith("cuda")  # else it stays in host memory
    components = {
        "weights": sharded_weight_bytes(s, b, world, recipe.quantization) if args.sharding == "fsdp" and world > 1 else weight_bytes(s, b, recipe.quantization),
        "adapters": trainable * 16,
        "record": record if on_device else 0,
        "activations": activations,
        "loss": int((1 + (b < 4) / 2) * min(tokens, CHUNK) * s.vocab * 4 + tokens * s.hidden * (4 + b)),
        "transient": int(tokens * (4 * s.intermediate + 4 * s.hidden) * max(b, 4)),
        "runtime": CUDA_RUNTIME if device.startswith("cuda") else 0,
        "probe": max(0, probe_bytes(plan, s, b, tokens, args.gradient_checkpointing) - activations - trainable * 16),
    }
    return {
        "peak_bytes": sum(components.values()),
        "components": components,
        "inputs": {"tokens_per_micro_batch": tokens, "plan": asdict(plan), "trainable_per_booster": trainable, "host_record_bytes": 0 if on_device else record, "dtype": recipe.dtype, "quantization": recipe.quantization,
                   "gradient_checkpointing": args.gradient_checkpointing, "device": device, "ranks": world,
                   "sharding": args.sharding, "shape": asdict(s)},
    }


def parse_size(text: str) -> int:
    """``24GiB``, ``24GB``, ``80G``, ``512MiB`` or plain bytes -> bytes (GB and G count as GiB here)."""
    units = {"tib": 2**40, "tb": 2**40, "t": 2**40, "gib": GIB, "gb": GIB, "g": GIB, "mib": 2**20, "mb": 2**20, "m": 2**20}
    raw = text.strip().lower().replace(" ", "")
    for unit, factor in units.items():
        if raw.endswith(unit):
            return int(float(raw[: -len(unit)]) * factor)
    return int(float(raw))


def device_memory(device: str) -> int:
    """Total memory of ``device``: the GPU's, or the machine's RAM for the CPU."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def config_dir(recipe: Recipe) -> Path:
    """A folder with the model's ``config.json``: a local folder as it is (weights not needed, so a config-only
    folder such as ``recipes/shapes/llama3-8b`` plans too), only ``config.json`` of a hub id (never its weights:
    a hub failure is a one-line error), else the converted model (an alias or ``.gguf`` file)."""
    local = Path(recipe.model).expanduser()
    if (local / "config.json").is_file():
        return local
    if recipe.model.count("/") == 1 and not local.exists() and not recipe.model.startswith((".", "/", "~")):
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(recipe.model, "config.json")).parent
        except Exception as err:  # network, auth, missing repo: all user-facing
            raise UserError(f"model '{recipe.model}': not a local folder, .gguf file or alias ({', '.join(ALIASES)}), and the "
                            f"hub could not provide its config.json: {first_line(err)}") from None
    return resolve_model_dir(recipe.model, recipe.allow_pickle, recipe.trust_remote_code)


def plan_recipe(recipe: Recipe, source: str, device: str, world: int = 1) -> dict:
    """Estimate a recipe from its model's skeleton (config only: nothing is loaded or downloaded beyond it)."""
    model = load_skeleton(config_dir(recipe), recipe.trust_remote_code)
    booster_plan = plan_for(recipe, model, source)
    trainable = trainable_per_booster(find_targets(model, recipe.target_modules), booster_plan)
    return estimate(recipe, booster_plan, model_shape(model, find_blocks(model)), trainable, device, world)


def summary_line(result: dict, budget: int) -> str:
    """``31.4 GiB needed (weights 15.0, activations 12.1, ...) of 24.0 GiB``: the numbers of a refusal."""
    parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in result["components"].items() if v >= 0.05 * GIB)
    return f"{result['peak_bytes'] / GIB:.1f} GiB needed ({parts}) of {budget / GIB:.1f} GiB"
