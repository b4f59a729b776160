"""The runtime: device choice, and collectives that receive their tensors on the backend's device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.conftest import tiny_recipe, train_in_memory
from xgblora_cli.common.errors import UserError
from xgblora_cli.common.runtime import (
    Ranks,
    init_from_env,
    pick_device,
    seeded_generator,
)


def test_device_choice() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="device: must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        pick_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="this torch has no CUDA device"):
            pick_device("cuda")


def test_more_ranks_than_gpus_is_one_clear_line(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("auto", 0) == torch.device("cuda", 0)
    with pytest.raises(UserError, match=r"device: 'auto': process with local rank 1 takes cuda:1, but this machine has 1 CUDA "
                                        r"device\(s\); start at most 1 per machine \(torchrun --nproc_per_node 1\) or set device: cpu"):
        pick_device("auto", 1)
    with pytest.raises(UserError, match=r"device: 'cuda:2': this machine has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        pick_device("cuda:2")
    assert pick_device("cpu", 3) == torch.device("cpu")


def test_seeded_generators_depend_on_position_only() -> None:
    draw = lambda *key: torch.rand(3, generator=seeded_generator(*key)).tolist()  # noqa: E731
    assert draw(0, 5, "blocks") == draw(0, 5, "blocks")
    assert draw(0, 5, "blocks") != draw(0, 6, "blocks") != draw(1, 5, "blocks")


def test_nccl_ranks_run_collectives_on_their_gpu(monkeypatch) -> None:
    """Under nccl the collectives' device is the rank's own GPU (NCCL takes CUDA tensors only); under gloo the CPU."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr("xgblora_cli.common.runtime.pick_device", lambda spec, local_rank: torch.device("cuda", local_rank))
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    assert init_from_env("auto") == Ranks(1, 2, 1, torch.device("cuda", 1))
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    assert init_from_env("auto").device == torch.device("cpu")


def test_every_tensor_of_a_train_step_reaches_the_collectives_on_the_ranks_device(tmp_path: Path, tiny_model_dir: Path,
                                                                                  monkeypatch) -> None:
    """A recording stand-in for the collectives, as rank 0 of 2 with identical data: every tensor handed to one
    (token counts, loss and token totals, the flat gradient, the booster digest) is on the collective device and
    dense, and the step's results are what two identical ranks give."""
    seen: list[tuple[str, torch.device, torch.dtype]] = []

    def all_reduce(tensor, op=None):
        seen.append(("all_reduce", tensor.device, tensor.dtype))
        tensor.mul_(2)  # the other rank holds the same values

    def all_gather(out, tensor):
        seen.append(("all_gather", tensor.device, tensor.dtype))
        for slot in out:
            slot.copy_(tensor)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist, "all_gather", all_gather)
    def as_rank0_of_2(setup) -> None:
        setup.ranks = Ranks(rank=0, world=2, device=setup.device)

    setup, _ = train_in_memory(tiny_recipe(tmp_path, tiny_model_dir, steps_per_booster=2, train={"max_steps": 2}), setup_hook=as_rank0_of_2)
    kinds = {kind for kind, _, _ in seen}
    assert kinds == {"all_reduce", "all_gather"} and len(seen) >= 2 * 3 + 1  # per step: counts, grads, loss, tokens
    assert all(device == setup.device for _, device, _ in seen), seen
    assert all(dtype in (torch.float32, torch.float64) for _, _, dtype in seen)
