"""The sharded GPU check (``train.sharding: fsdp``): per-GPU peak memory against the plan, step time and the exact
per-shard merge, on N GPUs with LLaMA3-8B's shapes (random bf16 weights written once to a local folder).

Run when a machine with two or more CUDA GPUs is lent (it needs torch, transformers, safetensors, accelerate,
pyyaml: no download), from the repository root:

    PYTHONPATH=. python -m benchmarks gpu_check_sharded --out $OUT/gpu_check_sharded.json   # a few minutes

Each of ``--nproc`` ranks (one process per GPU, NCCL) loads its rows of the base with the product's own sharded
loader, then runs ``--steps`` training steps of ``recipes/llama3_8b_2gpu.yaml``'s micro-batch (its global batch
split over the ranks, every position labelled) through the product's engine, loss, gradient reduction and
optimizer, each step a new booster whose blocks include block 0 on the first (the deepest backward), and merges
every booster exactly per shard. Printed per rank: ``torch.cuda.max_memory_allocated`` against ``xgblora plan
--gpus N``'s per-GPU estimate (less the CUDA runtime it adds), the median step and merge times. Target: each
GPU's peak within 15% of the plan, and under the 16 GB the recipe is written for.

On a machine without CUDA, ``--device cpu --nproc 2 --shapes <a small config folder>`` runs the same code small
over gloo (the test suite does, so the script is known to work before GPUs are lent).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from benchmarks.gpu_check import first_booster_with_block0, synchronize
from benchmarks.sharding import free_port

ROOT = Path(__file__).resolve().parent.parent


def write_random_base(shapes: Path, layers: int | None, folder: Path) -> Path:
    """``shapes/config.json``'s architecture (``layers`` blocks if given) with random bf16 weights, saved as a
    safetensors model folder (no tokenizer: the check feeds token ids)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(shapes)
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def worker(rank: int, world: int, port: int, args: dict) -> None:
    """One rank: load its shard, train and merge ``args['steps']`` boosters, write its measurements as JSON."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from xgblora_cli.common.runtime import init_from_env, pick_device, shutdown
    from xgblora_cli.core.boosting import (
        BoostingEngine,
        find_targets,
        plan_for,
        trainable_per_booster,
    )
    from xgblora_cli.core.loss import causal_lm_loss
    from xgblora_cli.core.merge import FactorStack, write_merged
    from xgblora_cli.core.train import make_optimizer
    from xgblora_cli.data.batches import Batch
    from xgblora_cli.models.base_weights import BaseWeights
    from xgblora_cli.models.loading import find_blocks
    from xgblora_cli.models.sharding import load_sharded, local_rows, root_gathered
    from xgblora_cli.plan import estimate, model_shape
    from xgblora_cli.recipe_file import load_recipe

    ranks = init_from_env(args["device"])
    device = pick_device(args["device"], rank)
    folder = Path(args["folder"])
    recipe = load_recipe(Path(args["recipe"]), [f"model={folder}", f"train.max_seq_len={args['seq']}", "dtype=bfloat16",
                                                "train.sharding=fsdp", "train.gradient_checkpointing=false"])
    model = load_sharded(folder, "bfloat16", device, ranks)
    plan = plan_for(recipe, model, "gpu_check_sharded")
    engine = BoostingEngine(model, plan, recipe.target_modules, recipe.seed, recipe.train.gradient_checkpointing)
    base, stack = BaseWeights(folder), FactorStack()
    per_rank = recipe.train.batch_size // world
    ids = torch.randint(0, model.config.vocab_size, (per_rank, args["seq"]), generator=torch.Generator().manual_seed(rank))
    batch = Batch(ids, torch.ones_like(ids), ids.clone()).to(device)
    first = first_booster_with_block0(recipe.seed, plan.num_layers, plan.layers_per_booster, plan.block_schedule)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    steps, merges = [], []
    for i in range(args["steps"] + 1):  # the first step warms up and is not timed
        booster = engine.start(first + i)
        optimizer = make_optimizer(booster, recipe.train, recipe.learning_rate)
        synchronize(device)
        started = time.perf_counter()
        with root_gathered(model):
            loss, _ = causal_lm_loss(model, batch)
            loss.backward()
        ranks.sum_grads_(booster.parameters())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        middle = time.perf_counter()
        write_merged(model, base, stack, stack.add(engine.finish(booster)))
        synchronize(device)
        if i:
            steps.append(middle - started)
            merges.append(time.perf_counter() - middle)
        del optimizer, booster, loss
    planned = estimate(recipe, plan, model_shape(model, find_blocks(model)), trainable_per_booster(find_targets(model, recipe.target_modules), plan),
                       str(device), world)
    held = sum(local_rows(q)[0].numel() * q.element_size() for q in model.parameters())
    total = sum(q.numel() * q.element_size() for q in model.parameters())
    result = {"rank": rank, "held_weight_bytes": held, "total_weight_bytes": total, "median_step_s": statistics.median(steps), "median_merge_s": statistics.median(merges),
              "peak_allocated_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
              "planned_peak_bytes": planned["peak_bytes"],
              "planned_without_runtime_bytes": planned["peak_bytes"] - planned["components"]["runtime"],
              "planned_components": planned["components"]}
    Path(args["results"], f"rank{rank}.json").write_text(json.dumps(result))
    shutdown(ranks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "llama3_8b_2gpu.yaml")
    p.add_argument("--shapes", type=Path, default=ROOT / "recipes" / "shapes" / "llama3-8b")
    p.add_argument("--layers", type=int, default=None, help="build only this many blocks (default: the config's)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--nproc", type=int, default=None, help="ranks (default: every visible CUDA GPU)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args()
    nproc = args.nproc or (torch.cuda.device_count() if args.device == "cuda" else 2)
    if nproc < 2:
        raise SystemExit(f"gpu_check_sharded: needs 2 or more ranks, this machine has {nproc} GPU(s); pass --nproc")
    with tempfile.TemporaryDirectory() as work:
        folder = write_random_base(args.shapes, args.layers, Path(work) / "base")
        results = Path(work) / "results"
        results.mkdir()
        shared = {"device": args.device, "folder": str(folder), "recipe": str(args.recipe), "seq": args.seq,
                  "steps": args.steps, "results": str(results)}
        mp.spawn(worker, args=(nproc, free_port(), shared), nprocs=nproc, join=True)
        ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in range(nproc)]
    gib = 2**30
    for r in ranks:
        peak = r["peak_allocated_bytes"]
        ratio = f"{r['planned_without_runtime_bytes'] / peak:.3f}" if peak else "-"
        print(f"rank {r['rank']}: step {r['median_step_s']:.3f} s, merge {r['median_merge_s']:.3f} s, peak allocated "
              f"{(peak or 0) / gib:.2f} GiB, plan {r['planned_peak_bytes'] / gib:.2f} GiB (without runtime / measured = {ratio})")
    summary = {"ranks": nproc, "device": args.device, "per_rank": ranks}
    print(f"sharded_ranks={nproc} median_step_s={statistics.median(r['median_step_s'] for r in ranks):.3f}"
          + (f" max_peak_gib={max(r['peak_allocated_bytes'] for r in ranks) / gib:.2f}" if ranks[0]["peak_allocated_bytes"] else ""))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
