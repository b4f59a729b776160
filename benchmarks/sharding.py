"""Memory per rank with the frozen base sharded (train.sharding: fsdp) against replicated, 2 CPU ranks over gloo.

Each mode runs 2 ranks (torch.multiprocessing) that load SmolLM2-135M and train ``--steps`` xgblora steps of a
global batch of ``--batch`` SST-2 examples; every rank reports the bytes of base weights it holds and its peak
anonymous memory (RssAnon, sampled every 20 ms; memory-mapped base files are not counted) above what it held
after the imports. Same model, data and steps for both modes; run with ``MALLOC_MMAP_THRESHOLD_=131072`` so
freed memory goes back to the system (as benchmarks/plan_check.py does).

    .venv/bin/python -m benchmarks sharding [--steps 2] [--batch 4]

Three modes: replicated, sharded, and sharded with the blocks' linear layers in 4-bit NF4 (``quantization: 4bit``).
Ends with ``fsdp_weight_ratio=<x> fsdp_peak_ratio=<y> fsdp_4bit_weight_ratio=<z>`` (over replicated, rank 0).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent


def anon() -> int:
    """Anonymous resident memory (RssAnon): what the process allocated, not pages of memory-mapped files (the base's
    safetensors are mapped, and which of their pages count as resident depends on what was read, not on what is held)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("RssAnon:"))
    return int(line.split()[1]) * 1024


class PeakSampler(threading.Thread):
    """The highest RssAnon seen, sampled every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.running = anon(), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, anon())
            time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def held_bytes(tensor) -> int:
    """Bytes a (local) parameter occupies: a tensor subclass's inner tensors (an NF4 weight's packed codes and
    scales, as its ``__tensor_flatten__`` lists them), else numel x element size."""
    if hasattr(tensor, "__tensor_flatten__"):
        return sum(held_bytes(getattr(tensor, name)) for name in tensor.__tensor_flatten__()[0])
    return tensor.numel() * tensor.element_size()


def worker(rank: int, world: int, port: int, recipe: dict, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from xgblora_cli.common.runtime import init_from_env, shutdown
    from xgblora_cli.core.rundir import RunDir
    from xgblora_cli.core.train import Trainer
    from xgblora_cli.recipe_file import recipe_from_dict
    from xgblora_cli.runner import prepare

    baseline = anon()
    sampler = PeakSampler()
    sampler.start()
    ranks = init_from_env("cpu")
    parsed = recipe_from_dict(recipe, "bench")
    setup = prepare(parsed, "bench", ranks)
    held = sum(held_bytes(p.to_local() if type(p).__name__ == "DTensor" else p) for p in setup.model.parameters())
    loaded = sampler.peak - baseline
    run = RunDir(parsed.output_dir)
    if ranks.main:
        run.create("{}\n", {"model_dir": str(setup.model_dir)}, overwrite=True)
    ranks.barrier()
    Trainer(setup, run, show_progress=False).fit()
    sampler.running = False
    sampler.join()
    peak = sampler.peak - baseline
    Path(out, f"rank{rank}.json").write_text(json.dumps({"weights": held, "peak": peak, "loaded": loaded}))
    shutdown(ranks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    args = p.parse_args()
    results = {}
    for mode in ("none", "fsdp", "fsdp+4bit"):
        with tempfile.TemporaryDirectory() as tmp:
            recipe = {"model": "smollm2-135m", "dataset": str(ROOT / "data" / "sst2_train_2000.jsonl"), "output_dir": str(Path(tmp) / "run"),
                      "method": "xgblora", "steps_per_booster": 1, "quantization": "4bit" if mode.endswith("4bit") else "none",
                      "train": {"max_steps": args.steps, "batch_size": args.batch, "max_seq_len": args.seq, "sharding": mode.split("+")[0]}}
            mp.spawn(worker, args=(2, free_port(), recipe, tmp), nprocs=2, join=True)
            results[mode] = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
        for rank, r in enumerate(results[mode]):
            print(f"sharding={mode:>9} rank {rank}: base weights held {r['weights'] / 2**20:7.1f} MiB, peak memory above "
                  f"imports {r['loaded'] / 2**20:7.1f} MiB when loaded, {r['peak'] / 2**20:7.1f} MiB after training", flush=True)
    none, fsdp, nf4 = results["none"][0], results["fsdp"][0], results["fsdp+4bit"][0]
    print(f"fsdp_weight_ratio={fsdp['weights'] / none['weights']:.3f} fsdp_peak_ratio={fsdp['peak'] / none['peak']:.3f} "
          f"fsdp_4bit_weight_ratio={nf4['weights'] / none['weights']:.3f}")


if __name__ == "__main__":
    main()
