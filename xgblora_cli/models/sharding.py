"""A frozen base sharded over the data-parallel ranks with FSDP2 (``train.sharding: fsdp``).

Each transformer block is its own FSDP unit and the root (embeddings, final norm, head) one more; every base
tensor is split by rows (``Shard(0)``, torch.chunk's split), and each rank reads only its own rows from the
memory-mapped base files, so no rank ever holds the whole model. A block's full weights exist on a rank only
while it runs (FSDP all-gathers them before, and frees them after, its forward and its backward).

Boosters are attached after sharding, as plain (replicated) modules around the sharded linear layers: the
adapters are tiny, so their gradients are summed over ranks with the existing flat all-reduce rather than
reduce-scattered. An exact merge runs per shard: each rank recomputes only its rows of a touched weight from
its rows of W0 and the booster's factors (:func:`xgblora_cli.core.merge.exact_rows_into`). The record, checkpoints
and resume are as without sharding (rank 0 writes).
"""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from xgblora_cli.common.errors import UserError, first_line
from xgblora_cli.common.runtime import Ranks
from xgblora_cli.models.base_weights import BaseWeights
from xgblora_cli.models.loading import find_blocks, quiet_transformers, torch_dtype
from xgblora_cli.models.nf4 import BLOCK, quantize_linears


def shard_rows(rows: int, world: int, rank: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of a ``rows``-row tensor that ``rank`` of ``world`` holds (torch.chunk's split,
    as FSDP2's ``Shard(0)``: ``ceil(rows / world)`` per rank, the last ones shorter or empty)."""
    chunk = math.ceil(rows / world)
    start = min(rank * chunk, rows)
    return start, min(start + chunk, rows)


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is an FSDP2 shard (a ``DTensor``) rather than a whole tensor (without importing
    torch.distributed.tensor, which costs most of a second, where nothing has: then nothing is sharded)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(tensor, module.DTensor)


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(this rank's rows of param, the first row's index in the whole tensor)``; the tensor itself if unsharded."""
    if not is_sharded(param):
        return param.data, 0
    local = param.to_local()
    mesh = param.device_mesh
    start, stop = shard_rows(param.shape[0], mesh.size(), mesh.get_local_rank())
    if local.shape[0] != stop - start:
        raise RuntimeError(f"unexpected shard of {tuple(param.shape)}: {tuple(local.shape)} rows on rank {mesh.get_local_rank()}")
    return local, start


def load_sharded(model_dir: Path, dtype: str, device: torch.device, ranks: Ranks, trust_remote_code: bool = False,
                 quantization: str = "none") -> nn.Module:
    """The causal LM in ``model_dir``, frozen, its parameters sharded over ``ranks``: each rank reads its rows only,
    or, with ``quantization: 4bit``, quantizes one block at a time and keeps its rows of the codes (nf4.py)."""
    if quantization == "4bit":
        model = build_sharded_nf4(model_dir, dtype, device, ranks, trust_remote_code)
    else:
        model = build_sharded(model_dir, dtype, device, ranks, trust_remote_code)
        read_rows_into(model, model_dir)
    freeze_and_init_root(model, device)
    model.reshard()  # the root stays gathered after its forward until told otherwise
    return model


def build_on_meta(model_dir: Path, dtype: str, trust_remote_code: bool = False) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The architecture of ``model_dir`` on the meta device (no memory), and its computed buffers (rotary
    frequencies: not stored in the checkpoint, so kept as built, to be restored once the model is on a device)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    except Exception as err:
        raise UserError(f"model '{model_dir}': could not be built for sharding: {first_line(err)}") from None
    model.tie_weights()
    return model, {name: buffer.clone() for name, buffer in model.named_buffers()}


def restore_buffers(model: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, buffer in buffers.items():
            model.get_buffer(name).copy_(buffer)


def build_sharded(model_dir: Path, dtype: str, device: torch.device, ranks: Ranks, trust_remote_code: bool = False) -> nn.Module:
    """The architecture of ``model_dir`` built on the meta device, every block and the root sharded (FSDP2), its
    shards allocated (uninitialised) on ``device`` and its computed buffers (rotary frequencies) restored."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, buffers = build_on_meta(model_dir, dtype, trust_remote_code)
    mesh = init_device_mesh(device.type, (ranks.world,))
    for block in find_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device=device)
    restore_buffers(model, buffers)
    return model


def build_sharded_nf4(model_dir: Path, dtype: str, device: torch.device, ranks: Ranks, trust_remote_code: bool = False) -> nn.Module:
    """As :func:`build_sharded` with the blocks' linear layers in NF4, the weights read in: one block at a time is
    made whole on ``device``, filled from the base, quantized and sharded (so a rank holds at most one whole block
    besides its shards); then the root (embeddings, final norm, head, unquantized), whole until it is sharded."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model, buffers = build_on_meta(model_dir, dtype, trust_remote_code)
    mesh = init_device_mesh(device.type, (ranks.world,))
    base = BaseWeights(model_dir)
    names = {id(module): name for name, module in model.named_modules()}
    blocks = find_blocks(model)
    kept = total = 0
    for block in blocks:
        block.to_empty(device=device)
        fill_whole(dict(block.named_parameters()), base, names[id(block)] + ".")
        quantized, unquantized = quantize_linears(block, ranks.world)
        kept, total = kept + unquantized, total + quantized + unquantized
        fully_shard(block, mesh=mesh)
    in_blocks = {id(module) for module in blocks.modules()}
    for module in model.modules():
        if id(module) not in in_blocks:
            module.to_empty(device=device, recurse=False)
    model.tie_weights()
    root = {name: param for name, param in model.named_parameters() if not name.startswith(names[id(blocks)] + ".")}
    fill_whole(root, base, "")
    fully_shard(model, mesh=mesh)
    restore_buffers(model, buffers)
    if kept and ranks.main:
        print(f"note: {kept} of {total} linear layers of the blocks stay unquantized: their size does not split into whole "
              f"NF4 blocks of {BLOCK} values on each of {ranks.world} ranks", flush=True)
    return model


def fill_whole(params: dict[str, nn.Parameter], base: BaseWeights, prefix: str) -> None:
    """Copy each of ``params`` whole from the base tensor ``prefix + name``."""
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(base.get(prefix + name).to(param.dtype))


def read_rows_into(model: nn.Module, model_dir: Path) -> None:
    """Fill each sharded parameter of ``model`` with this rank's rows of the base tensor, read from the
    memory-mapped files of ``model_dir`` (never the whole tensor)."""
    base = BaseWeights(model_dir)
    with torch.no_grad():
        for name, param in model.named_parameters():
            local, start = local_rows(param)
            local.copy_(base.rows(name, start, start + local.shape[0]).to(local.dtype))


def freeze_and_init_root(model: nn.Module, device: torch.device) -> None:
    """Freeze ``model`` and run one token through the root: FSDP then knows which unit is the root (the loss calls
    the decoder directly, never the root). The root's weights are left gathered whole (``model.reshard()`` frees
    them)."""
    model.requires_grad_(False)
    model.config.use_cache = False
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device))


@contextlib.contextmanager
def root_gathered(model: nn.Module) -> Iterator[None]:
    """Hold the root unit's weights (embeddings, final norm, head) whole for a training step's forward, loss and
    backward: the loss reads the head outside the model's own forward (loss.py), which FSDP's hooks do not see."""
    sharded = hasattr(model, "unshard") and hasattr(model, "reshard")
    if sharded:
        model.unshard()
    try:
        yield
    finally:
        if sharded:
            model.reshard()
