"""A rank-r adapter around one frozen linear layer.

``y = base(x) + scale * (x @ A^T) @ B^T`` with ``A: (r, d_in)`` Kaiming-uniform and ``B: (d_out, r)`` zeros,
so a fresh adapter leaves the model's output unchanged. The adapter knows nothing of blocks or schedules:
which layers get one, and when its delta is merged, is :mod:`xgblora_cli.core.boosting`'s business.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """Wraps ``base`` (an ``nn.Linear`` with ``weight: (d_out, d_in)``) with trainable fp32 factors.

    Args:
        base: the frozen linear layer; its parameters are not touched.
        rank: r, the adapter rank.
        scale: alpha / r, multiplied into the adapter's output.
        generator: the random source for ``A``'s init, so a booster's init is reproducible from its seed.
    """

    def __init__(self, base: nn.Linear, rank: int, scale: float, generator: torch.Generator) -> None:
        super().__init__()
        self.base = base
        self.rank = rank
        self.scale = scale
        d_out, d_in = base.out_features, base.in_features  # (a quantized weight is packed: not its shape)
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, d_in, device=device, dtype=torch.float32))
        self.lora_b = nn.Parameter(torch.zeros(d_out, rank, device=device, dtype=torch.float32))
        self.reset_parameters(generator)

    @property
    def in_features(self) -> int:
        """d_in, the wrapped layer's."""
        return self.lora_a.shape[1]

    @property
    def out_features(self) -> int:
        """d_out, the wrapped layer's."""
        return self.lora_b.shape[0]

    def reset_parameters(self, generator: torch.Generator) -> None:
        """Kaiming-uniform ``A`` (as ``nn.Linear`` does, a = sqrt(5)) and zero ``B``."""
        bound = 1.0 / math.sqrt(self.lora_a.shape[1])
        with torch.no_grad():
            noise = torch.rand(self.lora_a.shape, generator=generator, dtype=torch.float32)
            self.lora_a.copy_((noise * 2.0 - 1.0) * bound)
            self.lora_b.zero_()

    def set_direction(self, v: torch.Tensor) -> None:
        """Point ``A``'s rows along ``v`` (r, d_in), keeping each row's norm (the random init's): a booster started
        along the loss gradient's top right singular vectors (``booster_init: gradient``). ``B`` stays zero."""
        with torch.no_grad():
            norms = self.lora_a.norm(dim=1, keepdim=True)
            unit = v.to(self.lora_a) / v.norm(dim=1, keepdim=True).clamp_min(1e-30).to(self.lora_a)
            self.lora_a.copy_(unit * norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_in) -> (..., d_out)."""
        out = self.base(x)
        low = F.linear(x.to(torch.float32), self.lora_a)  # (..., r)
        return out + (F.linear(low, self.lora_b) * self.scale).to(out.dtype)

    def delta(self) -> torch.Tensor:
        """The weight update this adapter stands for: ``scale * B @ A``, shape (d_out, d_in), fp32."""
        return self.scale * (self.lora_b.detach() @ self.lora_a.detach())

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U, V)`` with ``U @ V == delta()``: ``U = scale * B`` (d_out, r), ``V = A`` (r, d_in), fp32 CPU copies."""
        return (self.scale * self.lora_b.detach()).cpu().clone(), self.lora_a.detach().cpu().clone()
