"""Where and as whom this process computes: the device, its data-parallel rank and collectives, seeded randomness.

Data-parallel training is launched with ``torchrun --nproc_per_node N -m xgblora_cli train RECIPE``. Every rank
holds the whole model, draws the same blocks and the same adapter init for every booster (both are seeded by
``(seed, t)``, never by rank), reads its own contiguous slice of every global batch, and sums its adapter
gradients with the others. Because the loss of each slice is divided by the *global* count of labelled tokens,
the summed gradient equals the single-process gradient of the whole batch, so every rank takes the same
optimizer step and merges the same booster. Only rank 0 writes the run directory. Without ``WORLD_SIZE`` (or
with 1) nothing touches ``torch.distributed``: :data:`SINGLE` is used.

Collectives run on the backend's device: every tensor handed to one is first moved to :attr:`Ranks.device`
(the rank's GPU under nccl, the CPU under gloo) and the result is moved back where it came from.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from xgblora_cli.common.devices import DEVICE
from xgblora_cli.common.errors import UserError

FAULT_ENV = "XGBLORA_TEST_SIGKILL_AT_STEP"  # fault injection for the resume tests: SIGKILL self after this step


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when there is one (data-parallel rank r takes GPU ``local_rank``), else the CPU."""
    if not DEVICE.match(spec):
        raise UserError(f"device: must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device: '{spec}' asked for, but this torch has no CUDA device (use device: cpu or auto)")
    count = torch.cuda.device_count()
    if ":" in spec:
        index = int(spec.split(":")[1])
        if index >= count:
            raise UserError(f"device: '{spec}': this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", index)
    if local_rank >= count:
        raise UserError(f"device: '{spec}': process with local rank {local_rank} takes cuda:{local_rank}, but this machine has "
                        f"{count} CUDA device(s); start at most {count} per machine (torchrun --nproc_per_node {count}) "
                        "or set device: cpu")
    return torch.device("cuda", local_rank)


def seeded_generator(seed: int, index: int, purpose: str) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, index, purpose)``, never on history: randomness seeded by
    position, so a resumed run makes the same draws."""
    digest = hashlib.sha256(f"{seed}:{index}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` data-parallel ranks; ``device`` is where its collectives run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

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
        """In-place sum over ranks (identity for one rank); the all-reduce runs on ``device``."""
        if self.active:
            on_device = tensor.to(self.device)
            dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
            if on_device is not tensor:
                tensor.copy_(on_device)
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
        value = value.to(self.device)
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
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    resolved = pick_device(device, local_rank)
    if not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    collective = resolved if dist.get_backend() == "nccl" else torch.device("cpu")
    return Ranks(rank, world, local_rank, collective)


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


def fault_injection() -> Callable[[int], None] | None:
    """For the crash-and-resume tests: a hook that SIGKILLs this process after the step named by
    ``XGBLORA_TEST_SIGKILL_AT_STEP``, or None (read once at start, never in the training loop)."""
    at = int(os.environ.get(FAULT_ENV, "-1"))
    if at < 0:
        return None

    def kill_after(step: int) -> None:
        if step == at:
            os.kill(os.getpid(), signal.SIGKILL)

    return kill_after
