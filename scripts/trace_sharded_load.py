"""Where a sharded rank's memory goes while ``train.sharding: fsdp`` loads the base: the steps of
``xgblora_cli.sharding.load_sharded``, replayed on 2 CPU ranks over gloo, with each rank's anonymous resident
memory (RssAnon, MiB) after each step. Memory-mapped base files are not counted, so the replicated path's weights
(file pages both processes share) do not show there, while a sharded rank's copied rows do.

    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python scripts/trace_sharded_load.py [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp


def anon_mib() -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("RssAnon:"))
    return int(line.split()[1]) // 1024


def worker(rank: int, world: int, port: int, model_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from accelerate import init_empty_weights
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    from xgblora_cli.merge import BaseWeights, local_rows
    from xgblora_cli.models import find_blocks
    from xgblora_cli.runtime import init_from_env, shutdown

    ranks = init_from_env("cpu")
    steps = [("imports and process group", anon_mib())]
    config = AutoConfig.from_pretrained(model_dir)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.tie_weights()
    mesh = init_device_mesh("cpu", (world,))
    for block in find_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    steps.append(("built on meta, sharded, to_empty", anon_mib()))
    base = BaseWeights(Path(model_dir))
    with torch.no_grad():
        for name, param in model.named_parameters():
            local, start = local_rows(param)
            local.copy_(base.rows(name, start, start + local.shape[0]).to(local.dtype))
    steps.append(("this rank's rows copied in", anon_mib()))
    model.requires_grad_(False)
    with torch.no_grad():
        model(input_ids=torch.zeros((1, 1), dtype=torch.long))
    steps.append(("one forward (root gathered whole)", anon_mib()))
    model.reshard()
    steps.append(("root resharded", anon_mib()))
    held = sum(p.to_local().numel() * p.element_size() for p in model.parameters()) // 2**20
    if rank == 0:
        for what, mib in steps:
            print(f"rank 0: {what:<36} {mib:6d} MiB")
        print(f"rank 0: its shard of the base: {held} MiB")
    shutdown(ranks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    args = p.parse_args()
    from xgblora_cli.sources import resolve_model_dir

    model_dir = resolve_model_dir(args.model, False, False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port, str(model_dir)), nprocs=2, join=True)


if __name__ == "__main__":
    main()
