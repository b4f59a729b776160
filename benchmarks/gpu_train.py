"""End to end on a GPU: ``xgblora train`` of LLaMA3-8B's architecture (random bf16 weights) for a few packed steps,
xgblora at its defaults against the lora preset, each at its shipped rate: the training loss at the end and the
tokens per second. Random weights say nothing about accuracy; they show that the shipped rates move a big
model's loss (the xgblora rate once moved it from 12.44 to 12.22 in 40 steps where lora's reached 0.10) and what
a step costs through the command line, probes and merges included.

Run once when a CUDA GPU is lent (torch, transformers, safetensors, tokenizers, typer, rich, pyyaml; no download):

    PYTHONPATH=. python -m benchmarks gpu_train --out $OUT/gpu_train.json        # about 5 minutes on one H100

The model folder is written under ``--work`` (LLaMA3-8B: about 20 s) with a small byte-level BPE tokenizer trained
on the shipped SST-2 sentences (its ids are a subset of the model's vocabulary); the data are those sentences,
packed into rows of ``--seq`` tokens. Each method trains ``--steps`` steps of ``recipes/mmlu_llama3.yaml``'s
micro-batch with kappa ``--kappa``. On a machine without CUDA, ``--device cpu --shapes <small config>`` runs it
small (the test suite does).
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
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "sst2_train_2000.jsonl"
METHODS = {"xgblora": {"method": "xgblora"}, "lora": {"method": "lora", "rank": 8, "layers_per_booster": "all",
                                                      "steps_per_booster": None}}
"""Each row's recipe keys over recipes/mmlu_llama3.yaml: xgblora at the recipe's own rate, lora at its preset's
shipped rate (the recipe's rate is xgblora's)."""


def tokenizer_for(texts: list[str], vocab: int):  # -> transformers.PreTrainedTokenizerFast
    """A byte-level BPE tokenizer of at most ``vocab`` ids, trained on ``texts`` (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=min(vocab, 4000), special_tokens=["<|end|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|pad|>")


def write_model(shapes: Path, folder: Path, dtype: torch.dtype) -> float:
    """The architecture of ``shapes/config.json`` with random weights and a small tokenizer, saved to ``folder``;
    the seconds it took."""
    from transformers import AutoConfig, AutoModelForCausalLM

    started = time.perf_counter()
    config = AutoConfig.from_pretrained(shapes)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(folder)
    texts = [json.loads(line)["instruction"] for line in DATA.read_text().splitlines()]
    tokenizer_for(texts, config.vocab_size).save_pretrained(folder)
    del model
    return time.perf_counter() - started


def train(name: str, keys: dict, args: argparse.Namespace, model: Path) -> dict:
    """One ``xgblora train`` of ``args.steps`` packed steps; its final loss (mean of the last 5 steps), the median
    tokens per second and the wall time."""
    recipe = yaml.safe_load(args.recipe.read_text())
    recipe.pop("eval", None)
    out = args.work / name.replace(" ", "_")
    recipe.update({"model": str(model), "dataset": str(DATA), "output_dir": str(out), "prompt_template": "plain",
                   "device": args.device, "steps_per_booster": args.kappa, **keys})
    recipe["train"].update(max_steps=args.steps, batch_size=2, grad_accum=1, max_seq_len=args.seq, packing=True,
                           warmup_steps=max(1, args.steps // 10), checkpoint_every=args.steps)
    if keys["method"] != "xgblora":
        recipe["train"].pop("learning_rate", None)  # its preset's shipped rate
    recipe = {k: v for k, v in recipe.items() if v is not None}
    path = args.work / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "xgblora_cli", "train", str(path), "--no-progress", "--force",
                           "--no-memory-check"], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{name}: xgblora train failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    return {"first_loss": steps[0]["loss"], "final_loss": statistics.mean(r["loss"] for r in steps[-5:]),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps[1:] or steps),
            "wall_s": time.perf_counter() - started, "lr": yaml.safe_load((out / "recipe.yaml").read_text())["train"]["learning_rate"]}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks gpu_train", description=__doc__.split("\n")[0])
    p.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "mmlu_llama3.yaml")
    p.add_argument("--shapes", type=Path, default=ROOT / "recipes" / "shapes" / "llama3-8b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--kappa", type=int, default=10)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu_train")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "model"
    write_s = write_model(args.shapes, model, torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    print(f"model folder written in {write_s:.0f} s", flush=True)
    results = {}
    for name in args.methods.split(","):
        results[name] = train(name, METHODS[name], args, model)
        r = results[name]
        print(f"{name:>8} (lr {r['lr']:g}): loss {r['first_loss']:.2f} -> {r['final_loss']:.2f} in {args.steps} steps, "
              f"{r['tokens_per_s']:,.0f} tokens/s, {r['wall_s']:.0f} s", flush=True)
    if "xgblora" in results and "lora" in results:
        x, lo = results["xgblora"], results["lora"]
        print(f"final_loss_xgblora={x['final_loss']:.3f} final_loss_lora={lo['final_loss']:.3f} "
              f"tokens_per_s_ratio_xgblora_vs_lora={x['tokens_per_s'] / lo['tokens_per_s']:.2f}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"steps": args.steps, "kappa": args.kappa, "seq": args.seq, "device": args.device,
                                        "methods": results}, indent=1))


if __name__ == "__main__":
    main()
