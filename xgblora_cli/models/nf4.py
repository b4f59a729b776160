"""A 4-bit base that FSDP2 can shard (``quantization: 4bit`` with ``train.sharding: fsdp``).

bitsandbytes' 4-bit weights cannot be split by FSDP2, so a sharded 4-bit base holds torchao's ``NF4Tensor``
instead: the same NF4 code book and blocks of 64 values as bitsandbytes' ``nf4``, with double-quantized block
scales (groups of up to 256 scales, as many as divide a rank's share), about 4.127 bits a value, and FSDP2 hooks that all-gather the packed codes and scales
(never a dequantized weight) before a block runs. ``F.linear`` on it dequantizes to the input's dtype, one layer
at a time, forward and backward.

Each linear layer of a block is quantized whole on its rank (the double quantization needs the whole tensor's
mean scale) from the base in memory, then FSDP2 keeps only the rank's rows. A layer whose size does not split
into whole 64-value blocks per rank (``shardable``) stays unquantized, and is counted. Merged boosters
stay beside a quantized layer as exact fp32 factors (quantized.py), never folded into its codes.
"""

from __future__ import annotations

import torch
from torch import nn

from xgblora_cli.common.errors import UserError, first_line

BLOCK = 64  # values per NF4 block (one absmax scale each)
SCALER_BLOCK = 256  # scales per double-quantization group, at most (fewer where a rank's share of scales needs it)


def to_nf4(weight: torch.Tensor, world: int = 1):  # -> torchao NF4Tensor, the weight's shape and dtype
    """``weight`` (d_out, d_in) quantized to NF4 by torchao, its scale groups sized so that each of ``world`` row
    shards holds whole groups; a clear error when torchao cannot be loaded."""
    try:
        from torchao.quantization import to_nf4 as quantize
    except Exception as err:
        raise UserError(f"quantization: 4bit with train.sharding: fsdp needs torchao, which could not be loaded: {first_line(err)}") from None
    return quantize(weight.contiguous(), BLOCK, scaler_block(weight.numel() // BLOCK // world))


def scaler_block(blocks_per_rank: int) -> int:
    """The largest double-quantization group (at most 256 scales) that divides a rank's ``blocks_per_rank``."""
    return next(size for size in range(min(SCALER_BLOCK, blocks_per_rank), 0, -1) if blocks_per_rank % size == 0)


def shardable(shape: tuple[int, ...], world: int) -> bool:
    """Whether a (d_out, d_in) weight splits into ``world`` row shards of whole NF4 blocks (64 values)."""
    rows, numel = shape[0], int(torch.Size(shape).numel())
    return len(shape) == 2 and rows % world == 0 and numel % (BLOCK * world) == 0


def quantize_linears(block: nn.Module, world: int) -> tuple[int, int]:
    """Replace, in place, the weight of every linear layer of ``block`` that is :func:`shardable` over ``world``
    ranks by its NF4 version (frozen); returns ``(quantized, kept unquantized)`` counts."""
    quantized = kept = 0
    for module in block.modules():
        if not isinstance(module, nn.Linear):
            continue
        if not shardable(tuple(module.weight.shape), world):
            kept += 1
            continue
        module.weight = nn.Parameter(to_nf4(module.weight.detach(), world), requires_grad=False)
        quantized += 1
    return quantized, kept


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """The values an NF4 weight stands for (d_out, d_in), in its dtype; what a forward multiplies by."""
    return weight.get_original_weight()
