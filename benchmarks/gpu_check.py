"""The LLaMA3-8B GPU check: measured peak memory and step time of xgblora and LoRA r=32, merge time, against the plan.

Run once when a CUDA GPU is lent (it needs only torch, transformers, safetensors, rich, pyyaml: no download, no
datasets/bitsandbytes/gguf), from the repository root:

    PYTHONPATH=. python -m benchmarks gpu_check --out $OUT/gpu_check.json      # about 5 minutes on one GPU

LLaMA3-8B's architecture (``recipes/shapes/llama3-8b``) with random bf16 weights is built on the GPU; a fixed
random batch of the shipped recipe's micro-batch (``recipes/mmlu_llama3.yaml``: 2 x 512 tokens), every position
labelled (the planner's worst case). For each method: ``--steps`` training steps (forward, backward, AdamW)
through the product's own engine and loss; xgblora's first timed booster includes block 0 (the deepest
backward, which the planner assumes), the others are drawn as in training. Printed beside each measurement:
``xgblora plan``'s estimate for the same recipe (its peak minus the CUDA runtime it adds, compared with
``torch.cuda.max_memory_allocated``). Then ``benchmarks/merge.py``'s merge timing at T = 1 and 1,000 on the
same GPU. Targets (issue 14): xgblora peak < 20 GiB at seq 512, planner within 15%, xgblora step <= LoRA r=32's.

On a machine without CUDA, ``--device cpu --shapes <a small config folder>`` runs the same code small (the test
suite does, so the script is known to work before a GPU is lent).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from xgblora_cli.common.runtime import pick_device
from xgblora_cli.core.boosting import (
    BoostingEngine,
    booster_blocks,
    find_targets,
    plan_for,
    trainable_per_booster,
)
from xgblora_cli.core.loss import causal_lm_loss
from xgblora_cli.core.train import make_optimizer
from xgblora_cli.data.batches import Batch
from xgblora_cli.models.loading import find_blocks
from xgblora_cli.plan import CUDA_RUNTIME, GIB, estimate, model_shape
from xgblora_cli.recipe_file import load_recipe

ROOT = Path(__file__).resolve().parent.parent
METHODS = {"xgblora": [], "lora r=32": ["method=lora", "rank=32", "layers_per_booster=all", "steps_per_booster=null"],
           "lora": ["method=lora", "rank=8", "layers_per_booster=all", "steps_per_booster=null"],
           "cola": ["method=cola", "rank=8", "layers_per_booster=all", "steps_per_booster=null"]}
"""Each measured setting: overrides of the recipe (which sets rank 2, k=4 and kappa=50; rank 1 until the GPU rows in docs/gpus.md were measured). ``lora`` and ``cola`` are
their presets' adapters (r=8 on all blocks)."""


def build_model(shapes: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The architecture of ``shapes/config.json`` with random weights, built on ``device``, frozen."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(shapes)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.requires_grad_(False)
    model.config.use_cache = False
    return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_booster_with_block0(seed: int, layers: int, k: int, schedule: str = "random") -> int:
    """The first booster index whose blocks include block 0 (the deepest backward)."""
    return next(t for t in range(100_000) if 0 in booster_blocks(seed, t, layers, k, schedule))


def measure(model, recipe, device: torch.device, steps: int) -> dict:
    """Median step time and peak allocated memory of ``steps`` steps, each a fresh booster (xgblora: the first
    one reaches block 0)."""
    plan = plan_for(recipe, model, "gpu_check")
    targets = find_targets(model, recipe.target_modules)
    engine = BoostingEngine(model, plan, recipe.target_modules, recipe.seed, recipe.train.gradient_checkpointing)
    vocab, size, seq = model.config.vocab_size, recipe.train.batch_size, recipe.train.max_seq_len
    ids = torch.randint(0, vocab, (size, seq), generator=torch.Generator().manual_seed(0))
    batch = Batch(ids, torch.ones_like(ids), ids.clone()).to(device)
    first = first_booster_with_block0(recipe.seed, plan.num_layers, plan.layers_per_booster) if plan.layers_per_booster < plan.num_layers else 0
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, lowest = [], []
    for i in range(steps + 1):  # the first step warms up kernels and the allocator and is not timed
        booster = engine.start(first if i <= 1 else first + i)
        optimizer = make_optimizer(booster, recipe.train, recipe.learning_rate)
        synchronize(device)
        started = time.perf_counter()
        try:
            loss, _ = causal_lm_loss(model, batch)
            loss.backward()
            optimizer.step()
        except torch.OutOfMemoryError:
            engine.discard(booster)  # the model is left without adapters for the next setting
            raise
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i:
            times.append(time.perf_counter() - started)
            lowest.append(min(booster.blocks))
        engine.finish(booster)
        del optimizer, booster, loss
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    reserved = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
    planned = estimate(recipe, plan, model_shape(model, find_blocks(model)), trainable_per_booster(targets, plan), str(device))
    return {"median_step_s": statistics.median(times), "step_s": times, "lowest_blocks": lowest, "peak_allocated_bytes": peak, "peak_reserved_bytes": reserved,
            "planned_peak_bytes": planned["peak_bytes"], "planned_without_runtime_bytes": planned["peak_bytes"] - planned["components"]["runtime"],
            "planned_components": planned["components"]}


def measure_or_oom(model, recipe, device: torch.device, steps: int) -> dict:
    """``measure``, or ``{"oom": True}`` when the device (or ``--memory-cap-gib``) runs out of memory."""
    try:
        return measure(model, recipe, device, steps)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return {"oom": True}


def report_line(name: str, r: dict) -> str:
    """One printed line: step time, measured peak and the plan beside it."""
    if r.get("oom"):
        return f"{name:>16}: out of memory"
    peak = r["peak_allocated_bytes"]
    ratio = f"{r['planned_without_runtime_bytes'] / peak:.3f}" if peak else "-"
    return (f"{name:>16}: step {r['median_step_s']:.3f} s (lowest blocks {r['lowest_blocks']}), peak allocated "
            f"{(peak or 0) / GIB:.2f} GiB (reserved {(r['peak_reserved_bytes'] or 0) / GIB:.2f}), plan {r['planned_peak_bytes'] / GIB:.2f} GiB with {CUDA_RUNTIME / GIB:.2f} runtime "
            f"(plan without runtime / measured = {ratio})")


def merge_times(device: str, rounds: int) -> str:
    """The merge benchmark's output at T = 1 and 1,000 on ``device``, ``rounds`` interleaved rounds at least."""
    done = subprocess.run([sys.executable, "-m", "benchmarks", "merge", "--device", device, "--boosters", "1,1000",
                           "--rounds", str(rounds)], capture_output=True, text=True, cwd=ROOT)
    return (done.stdout + done.stderr).strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "mmlu_llama3.yaml")
    p.add_argument("--shapes", type=Path, default=ROOT / "recipes" / "shapes" / "llama3-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--seq", type=int, default=512, help="tokens per sequence of the first (reported) measurement")
    p.add_argument("--more-seqs", default="", help="comma-separated further sequence lengths, each measured the same way")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated names of METHODS to measure")
    p.add_argument("--memory-cap-gib", type=float, default=None,
                   help="limit this process's CUDA allocator to this many GiB (a smaller card, e.g. 22.5 for a 24 GB one)")
    p.add_argument("--skip-merge", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args()
    device = pick_device(args.device)
    dtype = torch.bfloat16
    if args.memory_cap_gib is not None and device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * GIB / total), device)
    model = build_model(args.shapes, device, dtype)
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "methods": {}}
    seqs = [args.seq, *[int(v) for v in args.more_seqs.split(",") if v]]
    results["by_seq"] = {}
    for seq in seqs:
        runs = results["by_seq"][str(seq)] = {}
        for name in args.methods.split(","):
            recipe = load_recipe(args.recipe, [f"model={args.shapes}", f"train.max_seq_len={seq}", "dtype=bfloat16", *METHODS[name]])
            runs[name] = r = measure_or_oom(model, recipe, device, args.steps)
            print(report_line(f"{name} @{seq}", r), flush=True)
    results["methods"] = results["by_seq"][str(args.seq)]
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_merge:
        results["merge"] = merge_times(str(device), 2)
        print(results["merge"], flush=True)
    x, lora = (results["methods"].get(name, {"oom": True}) for name in ("xgblora", "lora r=32"))
    if not x.get("oom") and not lora.get("oom"):
        results["step_ratio_xgblora_vs_lora32"] = ratio = x["median_step_s"] / lora["median_step_s"]
        print(summary_line(ratio, x, lora))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))


def summary_line(ratio: float, x: dict, lora: dict) -> str:
    """The machine-readable last line: ``ratio`` (xgblora's step over LoRA r=32's), and both peaks against the plan."""
    summary = f"step_ratio_xgblora_vs_lora32={ratio:.3f}"
    if x["peak_allocated_bytes"]:
        summary += (f" xgblora_peak_gib={x['peak_allocated_bytes'] / GIB:.2f} lora32_peak_gib={lora['peak_allocated_bytes'] / GIB:.2f}"
                    f" plan_ratio_xgblora={x['planned_without_runtime_bytes'] / x['peak_allocated_bytes']:.3f}"
                    f" plan_ratio_lora32={lora['planned_without_runtime_bytes'] / lora['peak_allocated_bytes']:.3f}")
    return summary


if __name__ == "__main__":
    main()
