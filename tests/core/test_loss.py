"""The chunked head loss equals plain cross-entropy over full logits, in value and in gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xgblora_cli.core import loss as loss_module
from xgblora_cli.core.loss import head_loss_sum


def test_chunked_loss_and_gradient_match_full_logits(monkeypatch) -> None:
    monkeypatch.setattr(loss_module, "CHUNK", 7)  # several chunks, the last one partial
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=False).requires_grad_(False)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    ours = head_loss_sum(head, hidden, targets)
    (2.0 * ours).backward()
    ours_grad = hidden.grad.clone()
    hidden.grad = None
    reference = F.cross_entropy(hidden @ head.weight.t(), targets, reduction="sum")
    (2.0 * reference).backward()
    assert torch.allclose(ours, reference, atol=1e-4)
    assert torch.allclose(ours_grad, hidden.grad, atol=1e-5)


def test_no_gradient_needed_means_no_gradient_kept() -> None:
    head = nn.Linear(4, 9, bias=False).requires_grad_(False)
    with torch.no_grad():
        value = head_loss_sum(head, torch.randn(5, 4), torch.randint(0, 9, (5,)))
    assert value.item() > 0
