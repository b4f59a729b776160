"""Check ``xgblora plan`` against measured peak memory of real CPU training runs, each in a fresh process.

Peak is measured as the process's peak resident set (``ru_maxrss``) over loading and training, minus its
resident set right after the imports (torch, transformers and this package: the runtime, which the planner
leaves out on a CPU), with ``MALLOC_MMAP_THRESHOLD_=131072`` so that glibc returns large freed blocks instead
of keeping them resident (without it the resident peak was 15-35% above the live bytes; see plan.py). Every batch is filled to ``max_seq_len`` with long records, so the planner's padded
worst case is what actually runs.

    .venv/bin/python -m benchmarks plan_check                  # the default sizes (tiny random models + SmolLM2)
    .venv/bin/python -m benchmarks plan_check --only tiny-512  # one of them

Prints one line per size with estimate, measurement and their ratio, then ``max_abs_error=X``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from xgblora_cli.recipe_file import apply_override

ROOT = Path(__file__).resolve().parent.parent
# name -> (model: "smollm2-135m" or tiny (hidden, intermediate, layers, heads, kv heads, vocab)), recipe fields
SIZES: dict[str, tuple] = {
    "tiny-256": ((256, 1024, 8, 8, 4, 8000), {"train.batch_size": 4, "train.max_seq_len": 256}),
    # a rank-8 booster over every block, started along the gradient: the probe's flows of all blocks at once
    "tiny-512": ((512, 1536, 8, 8, 4, 16000), {"train.batch_size": 8, "train.max_seq_len": 256, "rank": 8, "layers_per_booster": "all",
                                             "booster_init": "gradient"}),
    "tiny-256-bf16": ((256, 1024, 8, 8, 4, 8000), {"train.batch_size": 4, "train.max_seq_len": 128, "dtype": "bfloat16"}),
    "smollm2-b4s256": ("smollm2-135m", {"train.batch_size": 4, "train.max_seq_len": 256}),
    "smollm2-b8s256-lora": ("smollm2-135m", {"train.batch_size": 8, "train.max_seq_len": 256, "method": "lora"}),
}


def long_records(path: Path, count: int = 64) -> Path:
    """Records whose answers are long enough to fill any max_seq_len up to 2048 tokens."""
    text = " ".join(json.loads(line)["instruction"] for line in (ROOT / "data" / "arc_easy_train_600.jsonl").read_text().splitlines()[:80])
    rows = [{"instruction": f"Repeat the passage ({i}).", "input": "", "output": text} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def save_tiny(folder: Path, hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from xgblora_cli.models.sources import resolve_model_dir

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("smollm2-135m"))
    config = LlamaConfig(vocab_size=max(vocab, len(tokenizer)), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fields(model: str, data: Path, out: Path, extra: dict) -> dict:
    recipe: dict = {"model": model, "dataset": str(data), "output_dir": str(out), "method": "xgblora", "steps_per_booster": 1,
                    "train": {"max_steps": 3, "checkpoint_every": 100, "learning_rate": 1e-4}}
    for key, value in extra.items():
        apply_override(recipe, f"{key}={value}")
    return recipe


def warm_up() -> None:
    """Import the model classes and run one step of a 2-block toy LLaMA: the runtime's own memory (kernels,
    thread pools, lazily imported modules) is then in the baseline, as on a GPU it is in the CUDA context."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: F401

    toy = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2))
    toy(input_ids=torch.zeros(1, 8, dtype=torch.long), labels=torch.zeros(1, 8, dtype=torch.long)).loss.backward()
    del toy


def probe(recipe_json: str) -> None:
    """Child process: baseline RSS after imports, then train; print the measurement and the estimate."""
    import resource

    from xgblora_cli import plan, runner
    from xgblora_cli.core import (
        boosting,  # noqa: F401  (the runtime the planner leaves out)
        train,
    )
    from xgblora_cli.core.rundir import RunDir
    from xgblora_cli.models import loading as models
    from xgblora_cli.recipe_file import recipe_from_dict

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()

    warm_up()
    baseline = rss()
    recipe = recipe_from_dict(json.loads(recipe_json), "probe")
    setup = runner.prepare(recipe, "probe")
    estimate = plan.estimate(recipe, setup.plan, plan.model_shape(setup.model, models.find_blocks(setup.model)), setup.trainable, "cpu")
    run = RunDir(recipe.output_dir)
    run.create("{}\n", {}, overwrite=False)
    train.Trainer(setup, run, show_progress=False).fit()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"measured": peak - baseline, "baseline": baseline, "estimate": estimate}))


def measure(name: str, work: Path) -> dict:
    model, extra = SIZES[name]
    if isinstance(model, tuple):
        model = str(save_tiny(work / f"model-{name}", *model))
    recipe = fields(model, long_records(work / "long.jsonl"), work / f"run-{name}", extra)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}  # large freed blocks go back to the system (see plan.py)
    done = subprocess.run([sys.executable, __file__, "--probe", json.dumps(recipe)], capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", choices=list(SIZES))
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(args.probe)
        return
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or SIZES:
            result = measure(name, Path(tmp))
            est, got = result["estimate"]["peak_bytes"], result["measured"]
            errors.append(abs(est / got - 1))
            parts = " ".join(f"{k}={v / 2**20:.0f}" for k, v in result["estimate"]["components"].items())
            print(f"{name}: estimate {est / 2**20:.0f} MiB, measured {got / 2**20:.0f} MiB, ratio {est / got:.3f}  ({parts})", flush=True)
    print(f"max_abs_error={max(errors):.3f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
