"""The loss gradient with respect to frozen linear weights, read from what flows through the layers.

For a linear layer ``y = x @ W.T`` over the n token positions of a batch, with inputs ``X: (n, d_in)`` and output
gradients ``Gy: (n, d_out)``, the weight gradient is ``dL/dW = Gy.T @ X``, shape (d_out, d_in). :func:`capture`
runs forward and backward once per micro-batch and keeps ``X`` and ``Gy`` of the chosen layers (a
:class:`LayerFlow` each), never a parameter gradient: the base weights stay frozen and no ``.grad`` is touched.
From a flow, :func:`top_singular` finds the top singular vectors of ``dL/dW`` by orthogonal (power) iteration and
:func:`frobenius_sq` its squared norm, both without holding more than one layer's matrix at a time (and usually
not even that). Boosters use them to start along the gradient and to choose blocks (:mod:`xgblora_cli.core.boosting`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from xgblora_cli.common.runtime import SINGLE, Ranks


@dataclass
class LayerFlow:
    """What passed through one linear layer: inputs ``X`` (n, d_in) and output gradients ``Gy`` (n, d_out) in the
    model's dtype, concatenated over micro-batches (each ``Gy`` already scaled as its micro-batch's share of the
    loss). ``X`` is a view of the layer's input, so layers reading one tensor (q, k and v; gate and up) share its
    memory; products are taken in fp32."""

    shape: tuple[int, int]  # (d_out, d_in) of the layer's weight
    inputs: list[torch.Tensor] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor, gy: torch.Tensor) -> None:
        """One micro-batch: inputs (n, d_in) and output gradients (n, d_out)."""
        self.inputs.append(x)
        self.grads.append(gy)

    @property
    def x(self) -> torch.Tensor:
        """X in fp32, (n, d_in)."""
        return (torch.cat(self.inputs) if len(self.inputs) > 1 else self.inputs[0]).float()

    @property
    def gy(self) -> torch.Tensor:
        """Gy in fp32, (n, d_out)."""
        return (torch.cat(self.grads) if len(self.grads) > 1 else self.grads[0]).float()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``dL/dW @ v``: v (d_in, m) -> (d_out, m) (zeros for a flow that carried no gradient)."""
        if not self.inputs:
            return v.new_zeros(self.shape[0], v.shape[1])
        return self.gy.t() @ (self.x @ v)

    def rmatvec(self, u: torch.Tensor) -> torch.Tensor:
        """``dL/dW.T @ u``: u (d_out, m) -> (d_in, m) (zeros for a flow that carried no gradient)."""
        if not self.inputs:
            return u.new_zeros(self.shape[1], u.shape[1])
        return self.x.t() @ (self.gy @ u)

    def matrix(self) -> torch.Tensor:
        """``dL/dW`` itself, (d_out, d_in) fp32: for measurements on small models, not for training."""
        return self.gy.t() @ self.x


def _flatten(t: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (n, d), detached, in its own dtype (a view where the layout allows: no copy)."""
    return t.detach().reshape(-1, t.shape[-1])


def lift_input(leaf: nn.Module, leaves: list[torch.Tensor]) -> torch.utils.hooks.RemovableHandle:
    """Make ``leaf``'s hidden-state input a fresh leaf tensor that requires grad (appended to ``leaves``), so a
    backward from the loss walks down to ``leaf`` and no further (nothing below it builds a graph)."""

    def lift(module, args, kwargs):
        hidden = (args[0] if args else kwargs["hidden_states"]).detach().requires_grad_(True)
        leaves.append(hidden)
        return ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})

    return leaf.register_forward_pre_hook(lift, with_kwargs=True)


@contextmanager
def recording(layers: dict[str, nn.Module]) -> Iterator[dict[str, LayerFlow]]:
    """Inside the block, every forward and backward through ``layers`` adds its ``X`` and ``Gy`` to their flows
    (yielded, ``{name: LayerFlow}``); the hooks are removed on leaving. A position whose output carries no gradient
    (padding, or a layer the loss does not reach) adds nothing to ``Gy.T @ X``."""
    flows = {name: LayerFlow((layer.out_features, layer.in_features)) for name, layer in layers.items()}
    handles = []
    for name, layer in layers.items():
        def keep(module, args, output, flow=flows[name]):
            if output.requires_grad:  # x joins the flow with its gradient: a checkpoint's recompute adds nothing
                x = _flatten(args[0])
                output.register_hook(lambda g, x=x, flow=flow: flow.add(x, _flatten(g)))
        handles.append(layer.register_forward_hook(keep))
    try:
        yield flows
    finally:
        for handle in handles:
            handle.remove()


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
    A micro-batch without a labelled position adds nothing to any flow.
    """
    leaves: list[torch.Tensor] = []
    handle = lift_input(leaf, leaves)
    try:
        with recording(layers) as flows:
            for batch in batches:
                leaves.clear()
                loss = loss_fn(batch)
                if loss.requires_grad and leaves:  # grad of the leaf only: the hooks see every Gy, no .grad is touched
                    torch.autograd.grad(loss, leaves[:1], allow_unused=True)
    finally:
        handle.remove()
    return flows


def top_singular(
    flow: LayerFlow, rank: int, generator: torch.Generator, iters: int = 8, ranks: Ranks = SINGLE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top ``rank`` singular triplets of ``dL/dW`` (summed over data-parallel ``ranks``) by orthogonal
    iteration from a seeded start: ``(sigma (r,), U (d_out, r), V (r, d_in))`` with ``dL/dW ~ U diag(sigma) V``.

    Each iteration costs two passes over the flow (``O(n (d_in + d_out) r)``); ``rank + 2`` vectors are
    iterated so the top ``rank`` converge faster. Every rank must call this for the same layers (the sums are
    collective), whether or not its own flow carried a gradient; where no rank's did, or the gradient is not finite, sigma is zero.
    """
    d_in = flow.shape[1]
    width = min(rank + 2, d_in)
    v = torch.randn(d_in, width, generator=generator, dtype=torch.float32)
    v, _ = torch.linalg.qr(v.to(flow.x.device if flow.inputs else "cpu"))
    for _ in range(iters):
        u = ranks.sum_(flow.matvec(v))
        u, _ = torch.linalg.qr(u)
        v = ranks.sum_(flow.rmatvec(u))
        v, _ = torch.linalg.qr(v)
    u = ranks.sum_(flow.matvec(v))  # (d_out, width) = U_k diag(s) in the basis v
    if not bool(torch.isfinite(u).all()):  # a non-finite loss: no direction (training discards such a booster)
        return u.new_zeros(rank), u.new_zeros(flow.shape[0], rank), u.new_zeros(rank, d_in)
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


def _gram(g: torch.Tensor) -> torch.Tensor:
    gy = _flatten(g).float()
    return gy @ gy.t()


def block_scores(
    layers: dict[str, tuple[int, nn.Module]],
    leaf: nn.Module,
    batches: Iterable,
    loss_fn: Callable[[object], torch.Tensor],
    ranks: Ranks = SINGLE,
) -> dict[int, float]:
    """``{block: sum over its layers of ||dL/dW||_F^2}`` for ``layers`` given as ``{weight name: (block, layer)}``,
    summed over ``batches`` (each micro-batch's own gradient's norm) and over data-parallel ranks (the same on
    every rank).

    Computed as the flows pass, one micro-batch at a time, and dropped: with ``n`` positions an input tensor costs
    an ``n x n`` fp32 Gram matrix (made in forward, shared by the layers that read it, freed after the backward), or
    a layer its ``d_out x d_in`` gradient for the moment it is summed when that is smaller; never every layer's
    flow at once.
    """
    scores = {block: 0.0 for block, _ in layers.values()}
    for batch in batches:
        leaves: list[torch.Tensor] = []
        handles = [lift_input(leaf, leaves)]

        grams: dict[tuple, torch.Tensor] = {}  # one Gram per input tensor: q, k and v (gate and up) read the same

        def keep(module, args, output, name: str):
            if not output.requires_grad:
                return
            x = _flatten(args[0])
            if x.shape[0] ** 2 <= x.shape[1] * output.shape[-1]:  # the smaller of an n x n Gram and d_out x d_in
                key = (args[0].data_ptr(), tuple(args[0].shape))
                if key not in grams:
                    grams[key] = x.float() @ x.float().t()
                gram = grams[key]
                output.register_hook(lambda g, gram=gram, name=name: add(name, (gram * _gram(g)).sum()))
            else:
                output.register_hook(lambda g, x=x, name=name: add(name, (_flatten(g).float().t() @ x.float()).square().sum()))

        def add(name: str, value: torch.Tensor) -> None:
            scores[layers[name][0]] += float(value)

        for name, (_, layer) in layers.items():
            handles.append(layer.register_forward_hook(lambda m, a, o, name=name: keep(m, a, o, name)))
        try:
            loss = loss_fn(batch)
            if loss.requires_grad and leaves:
                torch.autograd.grad(loss, leaves[:1], allow_unused=True)
        finally:
            for handle in handles:
                handle.remove()
            grams.clear()
    blocks = sorted(scores)
    total = ranks.sum_(torch.tensor([scores[b] for b in blocks], dtype=torch.float64))
    return {block: float(value) for block, value in zip(blocks, total.tolist())}
