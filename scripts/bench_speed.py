"""Training-step time and peak memory: xgblora (rank 1, k blocks) vs our `lora` preset vs PEFT LoRA, same run.

Each method runs in its own fresh process (so peak RSS is its own) on the same model, batch and sequence
length, back to back in one invocation. A step is forward + backward + AdamW on a fixed random batch whose
every position carries a label. xgblora draws a new booster (new random blocks) for every step, so the median
covers the spread of backward depths. PEFT (benchmark-only dependency) uses its standard HF loss.

    .venv/bin/python scripts/bench_speed.py [--model smollm2-135m] [--batch 8] [--seq 256] [--steps 5] [--k 4]

Ends with ``step_time_ratio_vs_peft=X peak_mem_ratio_vs_peft=Y`` (xgblora over PEFT LoRA r=8 on all blocks).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch(vocab: int, size: int, seq: int):
    from xgblora_cli.data import Batch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (size, seq), generator=g)
    return Batch(ids, torch.ones_like(ids), ids.clone())


def engine_steps(model, model_dir, method: str, args, data) -> list[float]:
    """xgblora or the lora preset, through the product's own engine and loss."""
    from xgblora_cli.boosting import BoostingEngine
    from xgblora_cli.loss import causal_lm_loss
    from xgblora_cli.models import BaseWeights, find_blocks
    from xgblora_cli.recipe import BoosterPlan, TrainArgs
    from xgblora_cli.record import MergedWeights
    from xgblora_cli.train import make_optimizer

    layers = len(find_blocks(model))
    rank, k = (1, args.k) if method == "xgblora" else (8, layers)
    plan = BoosterPlan(rank, 2.0 * rank, k, 1, args.steps, layers)
    engine = BoostingEngine(model, plan, TARGETS, 0, MergedWeights(BaseWeights(model_dir)), args.checkpointing)
    times = []
    for step in range(args.steps):
        booster = engine.start(step)
        optimizer = make_optimizer(booster, TrainArgs())
        started = time.perf_counter()
        loss, _ = causal_lm_loss(model, data)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
        engine.discard(booster)
    return times


def peft_steps(model, args, data) -> list[float]:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    if args.checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        out = peft_model(input_ids=data.input_ids, attention_mask=data.attention_mask, labels=data.labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return times


def run_one(method: str, args) -> dict:
    from xgblora_cli.models import load_model, resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    model = load_model(model_dir, "float32")
    model.train()
    data = batch(model.config.vocab_size, args.batch, args.seq)
    loaded = rss_mb()
    times = peft_steps(model, args, data) if method == "peft" else engine_steps(model, model_dir, method, args, data)
    return {"method": method, "median_step_s": statistics.median(times[1:] or times), "peak_rss_mb": rss_mb(),
            "rss_after_load_mb": loaded, "steps": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description="xgblora vs lora preset vs PEFT LoRA: step time and peak memory")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (the first is not counted)")
    parser.add_argument("--k", type=int, default=4, help="xgblora blocks per booster")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing for all methods")
    parser.add_argument("--methods", default="xgblora,lora,peft")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    rows = {}
    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--one", method, "--model", args.model, "--batch", str(args.batch),
               "--seq", str(args.seq), "--steps", str(args.steps), "--k", str(args.k)]
        cmd += ["--checkpointing"] if args.checkpointing else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{method} failed:\n{out.stderr[-2000:]}")
        rows[method] = json.loads(out.stdout.strip().splitlines()[-1])
        r = rows[method]
        print(f"{method:>8}: median step {r['median_step_s']:.2f} s   peak RSS {r['peak_rss_mb']:.0f} MB "
              f"(after model load {r['rss_after_load_mb']:.0f} MB)", flush=True)
    print(f"model={args.model} batch={args.batch} seq={args.seq} steps={args.steps} k={args.k} checkpointing={args.checkpointing}")
    if "xgblora" in rows and "peft" in rows:
        x, p = rows["xgblora"], rows["peft"]
        print(f"step_time_ratio_vs_peft={x['median_step_s'] / p['median_step_s']:.3f} "
              f"peak_mem_ratio_vs_peft={x['peak_rss_mb'] / p['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
