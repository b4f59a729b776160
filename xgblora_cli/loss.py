"""Next-token loss over the labelled (response) positions only, without full-vocabulary logits for every token.

The decoder's hidden states are gathered at the positions that carry a label, and the output head plus
cross-entropy run over them in chunks, each checkpointed: the peak is one chunk's logits
(``chunk x vocab`` fp32) instead of ``batch x seq x vocab``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from xgblora_cli.data import IGNORE, Batch

CHUNK = 1024


def _chunk_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """hidden: (n, d), targets: (n,) -> summed cross-entropy, a scalar."""
    logits = head(hidden).float()  # (n, vocab)
    return F.cross_entropy(logits, targets, reduction="sum")


def causal_lm_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled positions, and their count.

    The returned loss is 0 (with a zero count) when no position carries a label.
    """
    hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    targets = batch.labels[:, 1:]  # position i predicts token i + 1
    keep = targets != IGNORE
    count = int(keep.sum())
    if count == 0:
        return hidden.sum() * 0.0, 0
    selected = hidden[:, :-1][keep]  # (count, d)
    labels = targets[keep]
    head = model.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, CHUNK):
        part_h, part_y = selected[start : start + CHUNK], labels[start : start + CHUNK]
        if torch.is_grad_enabled() and part_h.requires_grad:
            total = total + checkpoint(_chunk_loss, head, part_h, part_y, use_reentrant=False)
        else:
            total = total + _chunk_loss(head, part_h, part_y)
    return total / count, count
