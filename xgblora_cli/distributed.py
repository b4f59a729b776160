"""Data-parallel training over ``torch.distributed``: which rank we are, gradient averaging, agreement checks.

Launched with ``torchrun --nproc_per_node N -m xgblora_cli train RECIPE``. Every rank holds the whole model,
draws the same blocks and the same adapter init for every booster (both are seeded by ``(seed, t)``, never by
rank), reads its own contiguous slice of every global batch, and sums its adapter gradients with the
others. Because the loss of each slice is divided by the *global* count of labelled tokens, the summed
gradient equals the single-process gradient of the whole batch, so every rank takes the same optimizer step
and merges the same booster. Only rank 0 writes the run directory. Without ``WORLD_SIZE`` (or with 1) this
module is inert: :data:`SINGLE` is used and nothing touches ``torch.distributed``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from xgblora_cli.errors import UserError


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` data-parallel ranks."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes files and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def slice(self, batch_size: int) -> range:
        """Positions of this rank's examples within a global batch of ``batch_size``."""
        per = batch_size // self.world
        return range(self.rank * per, (self.rank + 1) * per)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (identity for one rank)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_grads_(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks in one flat all-reduce."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.sum_(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()

    def check_same(self, value: torch.Tensor, what: str) -> None:
        """Raise if ``value`` (a float64 digest) differs between ranks: they must never drift apart."""
        if not self.active:
            return
        gathered = [torch.empty_like(value) for _ in range(self.world)]
        dist.all_gather(gathered, value)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"data-parallel ranks disagree on {what}: {[g.tolist() for g in gathered]}")

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


SINGLE = Ranks()


def init_from_env(device: str) -> Ranks:
    """Join the process group that ``torchrun`` describes in the environment: gloo on the CPU, nccl on CUDA
    (``device`` is the recipe's, ``auto`` included), each rank on its own GPU."""
    from xgblora_cli.models import pick_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        resolved = pick_device(device, local_rank)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return Ranks(rank, world, local_rank)


def check_batch(ranks: Ranks, batch_size: int, source: str) -> None:
    if batch_size % ranks.world:
        raise UserError(f"{source}: train.batch_size: must be divisible by the {ranks.world} data-parallel ranks, got {batch_size}")


def shutdown(ranks: Ranks) -> None:
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()


def exit_worker(ranks: Ranks) -> None:
    """End a finished non-main rank now, without interpreter teardown.

    Such a rank has written nothing (rank 0 writes the run) and has left the process group; at interpreter
    teardown gloo's threads sometimes abort it (SIGABRT, "terminate called without an active exception"),
    which made torchrun report a completed run as failed.
    """
    if ranks.active and not ranks.main:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
