"""Where a sharded rank's memory goes while ``train.sharding: fsdp`` loads the base: the steps of
``xgblora_cli.models.sharding.load_sharded`` (its own functions, called one by one) on 2 CPU ranks over gloo, with each
rank's anonymous resident memory (RssAnon, MiB) after each step. Memory-mapped base files are not counted, so the replicated path's weights
(file pages both processes share) do not show there, while a sharded rank's copied rows do.

    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python -m benchmarks trace_sharded_load [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from benchmarks.sharding import anon, free_port


def worker(rank: int, world: int, port: int, model_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from xgblora_cli.common.runtime import init_from_env, shutdown
    from xgblora_cli.core.merge import local_rows
    from xgblora_cli.models.sharding import (
        build_sharded,
        freeze_and_init_root,
        read_rows_into,
    )

    ranks = init_from_env("cpu")
    device = torch.device("cpu")
    steps = [("imports and process group", anon())]
    model = build_sharded(Path(model_dir), "float32", device, ranks)
    steps.append(("built on meta, sharded, to_empty", anon()))
    read_rows_into(model, Path(model_dir))
    steps.append(("this rank's rows copied in", anon()))
    freeze_and_init_root(model, device)
    steps.append(("one forward (root gathered whole)", anon()))
    model.reshard()
    steps.append(("root resharded", anon()))
    held = sum(local_rows(p)[0].numel() * p.element_size() for p in model.parameters())
    if rank == 0:
        for what, size in steps:
            print(f"rank 0: {what:<36} {size // 2**20:6d} MiB")
        print(f"rank 0: its shard of the base: {held // 2**20} MiB")
    shutdown(ranks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    args = p.parse_args()
    from xgblora_cli.models.sources import resolve_model_dir

    model_dir = resolve_model_dir(args.model, False, False)
    mp.spawn(worker, args=(2, free_port(), str(model_dir)), nprocs=2, join=True)


if __name__ == "__main__":
    main()
