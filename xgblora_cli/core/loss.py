"""Next-token loss over the labelled (response) positions only, without full-vocabulary logits for every token.

The decoder's hidden states are gathered at the positions that carry a label; the output head and the
cross-entropy then run over them in chunks inside one autograd function that also computes the gradient with
respect to the hidden states as it goes. Peak memory is about one chunk of logits (``chunk x vocab`` fp32: the
logits, turned into softmax and then into their own gradient in place, with one ``exp`` pass) instead of
``batch x seq x vocab``, and the head's matmul is not recomputed in backward. The head itself is frozen
(adapters never target it), so no gradient for its weight is formed.
"""

from __future__ import annotations

import torch
from torch import nn

from xgblora_cli.data.batches import IGNORE, Batch

CHUNK = 1024


class _ChunkedHeadLoss(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets``; gradient for ``hidden`` only."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """hidden: (n, d), weight: (vocab, d), targets: (n,) -> scalar fp32."""
        total = hidden.new_zeros((), dtype=torch.float32)
        grad = torch.empty_like(hidden) if hidden.requires_grad else None
        for start in range(0, hidden.shape[0], CHUNK):
            h, y = hidden[start : start + CHUNK], targets[start : start + CHUNK]
            logits = (h @ weight.t()).float()  # (c, vocab): the one chunk-sized buffer, reused in place below
            target = logits.gather(1, y.unsqueeze(1)).squeeze(1)  # (c,)
            top = logits.amax(dim=-1, keepdim=True)  # (c, 1)
            probs = logits.sub_(top).exp_()  # unnormalised softmax, in place: the only exp over the chunk
            norm = probs.sum(dim=-1, keepdim=True)  # (c, 1)
            total += (top.squeeze(1) + norm.log().squeeze(1) - target).sum()  # logsumexp - target logit
            if grad is not None:
                probs.mul_(norm.reciprocal())  # softmax
                probs[torch.arange(y.shape[0]), y] -= 1.0  # d(sum CE)/d logits
                grad[start : start + CHUNK] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
            del logits, probs
        ctx.save_for_backward(grad if grad is not None else hidden.new_empty(0))
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_out.to(grad.dtype), None, None


def head_loss_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the (frozen, bias-free) output head over ``hidden`` (n, d)."""
    if getattr(head, "bias", None) is not None or head.weight.requires_grad:
        raise ValueError("the output head must be a frozen linear layer without bias")
    return _ChunkedHeadLoss.apply(hidden, head.weight, targets)


def causal_lm_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Mean next-token cross-entropy over labelled positions, and their count.

    The returned loss is 0 (with a zero count) when no position carries a label.
    """
    hidden = model.get_decoder()(**batch.model_inputs()).last_hidden_state
    targets = batch.labels[:, 1:]  # position i predicts token i + 1
    keep = targets != IGNORE
    count = int(keep.sum())
    if count == 0:
        return hidden.sum() * 0.0, 0
    selected = hidden[:, :-1][keep]  # (count, d)
    return head_loss_sum(model.get_output_embeddings(), selected, targets[keep]) / count, count
