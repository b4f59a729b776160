"""The loss gradient with respect to frozen linear weights, read from what flows through the layers.

For a linear layer ``y = x @ W.T`` over the n token positions of a batch, with inputs ``X: (n, d_in)`` and output
gradients ``Gy: (n, d_out)``, the weight gradient is ``dL/dW = Gy.T @ X``, shape (d_out, d_in). :func:`capture`
runs forward and backward once per micro-batch and keeps ``X`` and ``Gy`` of the chosen layers (a
:class:`LayerFlow` each), never a parameter gradient: the base weights stay frozen and no ``.grad`` is touched.
From a flow, :func:`top_singular` finds the top singular vectors of ``dL/dW`` by orthogonal (power) iteration and
:func:`frobenius_sq` its squared norm, both without holding more than one layer's matrix at a time (and usually
not even that). Boosters use them to start along the gradient and to choose blocks (:mod:`xgblora_cli.boosting`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn

from xgblora_cli.runtime import SINGLE, Ranks


@dataclass
class LayerFlow:
    """What passed through one linear layer: inputs ``X`` (n, d_in) and output gradients ``Gy`` (n, d_out), fp32,
    concatenated over micro-batches (each ``Gy`` already scaled as its micro-batch's share of the loss)."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)

    @property
    def x(self) -> torch.Tensor:
        return torch.cat(self.inputs) if len(self.inputs) > 1 else self.inputs[0]

    @property
    def gy(self) -> torch.Tensor:
        return torch.cat(self.grads) if len(self.grads) > 1 else self.grads[0]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``dL/dW @ v``: v (d_in, m) -> (d_out, m)."""
        return self.gy.t() @ (self.x @ v)

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        """``dL/dW.T @ u``: u (d_out, m) -> (d_in, m)."""
        return self.x.t() @ (self.gy @ u)

    def matrix(self) -> torch.Tensor:
        """``dL/dW`` itself, (d_out, d_in) fp32: for measurements on small models, not for training."""
        return self.gy.t() @ self.x


def _flatten(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1, t.shape[-1]).to(torch.float32)


def capture(
    layers: dict[str, nn.Module],
    leaf: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[object], torch.Tensor],
) -> dict[str, LayerFlow]:
    """Forward and backward of ``loss_fn(batch)`` for each of ``batches``; the flows through ``layers``.

    ``leaf`` is the lowest module the gradient must reach (the lowest adapted block): its hidden-state input is
    made a leaf that requires grad, so backward builds and walks nothing below it. ``loss_fn`` returns the
    micro-batch's share of the loss (its mean loss over the number of micro-batches, as training sums them).
    Only padding-free positions matter: a padded position has zero output gradient, so it adds nothing to
    ``Gy.T @ X``.
    """
    flows = {name: LayerFlow() for name in layers}
    leaves: list[torch.Tensor] = []
    handles = []

    def lift(module, args, kwargs):  # the lowest block's hidden states: a fresh leaf that asks for its gradient
        hidden = (args[0] if args else kwargs["hidden_states"]).detach().requires_grad_(True)
        leaves.append(hidden)
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

    handles.append(leaf.register_forward_pre_hook(lift, with_kwargs=True))
    for name, layer in layers.items():
        def keep(module, args, output, flow=flows[name]):
            flow.inputs.append(_flatten(args[0]))
            if output.requires_grad:
                output.register_hook(lambda g, flow=flow: flow.grads.append(_flatten(g)))
        handles.append(layer.register_forward_hook(keep))
    try:
        for batch in batches:
            leaves.clear()
            loss = loss_fn(batch)
            if loss.requires_grad:  # grad of the leaf only: the hooks see every Gy, no parameter's .grad is touched
                torch.autograd.grad(loss, leaves[:1], allow_unused=True)
            for flow in flows.values():
                if len(flow.grads) < len(flow.inputs):  # no labelled position (or unreached): no gradient
                    flow.grads.append(torch.zeros(flow.inputs[-1].shape[0], 0))
    finally:
        for handle in handles:
            handle.remove()
    for flow in flows.values():  # drop micro-batches that carried no gradient
        kept = [(x, g) for x, g in zip(flow.inputs, flow.grads) if g.shape[1]]
        flow.inputs, flow.grads = [x for x, _ in kept], [g for _, g in kept]
    return flows


def top_singular(
    flow: LayerFlow, rank: int, generator: torch.Generator, iters: int = 8, ranks: Ranks = SINGLE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``rank`` singular triplets of ``dL/dW`` (summed over data-parallel ``ranks``) by orthogonal
    iteration from a seeded start: ``(sigma (r,), U (d_out, r), V (r, d_in))`` with ``dL/dW ~ U diag(sigma) V``.

    Each iteration costs two passes over the flow (``O(n (d_in + d_out) r)``); ``rank + 2`` vectors are
    iterated so the top ``rank`` converge faster. A flow without gradient gives zeros for sigma and U and the
    start vectors for V.
    """
    x = flow.x if flow.inputs else None
    d_in = x.shape[1] if x is not None else 0
    width = rank + 2
    v = torch.randn(d_in, width, generator=generator, dtype=torch.float32).to(x.device if x is not None else "cpu")
    v, _ = torch.linalg.qr(v)
    for _ in range(iters):
        u = ranks.sum_(flow.matvec(v))
        u, _ = torch.linalg.qr(u)
        v = ranks.sum_(flow.rmatvec(u))
        v, _ = torch.linalg.qr(v)
    u = ranks.sum_(flow.matvec(v))  # (d_out, width) = U_k diag(s) in the basis v
    small_u, sigma, small_vh = torch.linalg.svd(u, full_matrices=False)
    v_top = (v @ small_vh.t())[:, :rank]  # rotate v to the singular basis
    return sigma[:rank], small_u[:, :rank], v_top.t().contiguous()


def frobenius_sq(flow: LayerFlow) -> float:
    """``||dL/dW||_F^2`` of one rank's flow: through the n x n Gram matrices when n is small, else explicitly."""
    if not flow.inputs:
        return 0.0
    x, gy = flow.x, flow.gy
    n, d_in, d_out = x.shape[0], x.shape[1], gy.shape[1]
    if n * n <= d_in * d_out:
        return float(((x @ x.t()) * (gy @ gy.t())).sum())
    return float(flow.matrix().square().sum())
