"""The rank-r adapter: identity at init, its delta is exactly what it adds, factors reproduce the delta."""

from __future__ import annotations

import torch
from torch import nn

from xgblora_cli.core.adapter import LoRALinear


def make(rank: int = 2, scale: float = 3.0) -> LoRALinear:
    torch.manual_seed(0)
    return LoRALinear(nn.Linear(6, 5, bias=False), rank, scale, torch.Generator().manual_seed(1))


def test_fresh_adapter_changes_nothing() -> None:
    adapter = make()
    x = torch.randn(4, 6)
    assert torch.equal(adapter(x), adapter.base(x))
    assert adapter.lora_a.abs().max() > 0  # A is initialised, B is zero
    assert adapter.lora_a.abs().max() <= 1 / 6**0.5


def test_output_equals_base_weight_plus_delta() -> None:
    adapter = make()
    with torch.no_grad():
        adapter.lora_b.normal_()
    x = torch.randn(3, 6)
    expected = x @ (adapter.base.weight + adapter.delta()).t()
    assert torch.allclose(adapter(x), expected, atol=1e-5)
    u, v = adapter.factors()
    assert torch.allclose(u @ v, adapter.delta(), atol=1e-6)


def test_init_depends_only_on_the_generator_seed() -> None:
    a, b = make(), make()
    assert torch.equal(a.lora_a, b.lora_a)
    c = LoRALinear(nn.Linear(6, 5), 2, 1.0, torch.Generator().manual_seed(2))
    assert not torch.equal(a.lora_a, c.lora_a)


def test_only_adapter_factors_get_gradients() -> None:
    adapter = make()
    adapter.base.requires_grad_(False)
    with torch.no_grad():
        adapter.lora_b.fill_(0.1)
    adapter(torch.randn(2, 6)).sum().backward()
    assert adapter.lora_a.grad is not None and adapter.lora_b.grad is not None
    assert adapter.base.weight.grad is None
