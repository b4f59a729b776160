"""Talking to a run: time to first token and tokens/s of ``xgblora chat`` on a run directory against its merged
folder, and ``xgblora generate``'s batched throughput against one prompt at a time (SmolLM2-135M, CPU).

A run directory is opened as the base with its record merged in memory once, at load (``open_target``), so after
loading a token should cost what it costs from the merged folder: the two are timed in interleaved rounds (a
round: one answer from each, the order alternating), each answer a fixed ``--tokens`` long, greedy, and the
ratio of their decode rates is repeated until its spread is known (``benchmarks.lib.ratio_rounds``). Then
``--prompts`` prompts answered in batches of ``--batch`` against one at a time, also in rounds.

    python -m benchmarks chat_speed [--run runs/quickstart] [--tokens 48] [--prompts 16] [--batch 16]

Without ``--run``, a 20-step run of ``recipes/quickstart.yaml`` is trained into ``runs/bench_chat`` first (once).
Ends with ``decode_ratio_run_vs_merged=X first_token_ratio_run_vs_merged=Y batched_throughput_ratio=Z``, each a
median over rounds, with its range.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.lib import ROOT, interleaved, ratio_rounds
from xgblora_cli.core.opening import open_target
from xgblora_cli.export.merged_folder import merge_run
from xgblora_cli.generation.engine import (
    Sampling,
    batch,
    prepare_for_generation,
    stream,
)
from xgblora_cli.generation.prompting import record_prompt

PROMPT = {"instruction": "Please choose the sentiment of this movie review: a gorgeous, moving film with a cast at the top "
                         "of its game, and the best score of the year.\n\nAnswer format: negative/positive", "input": ""}
REVIEWS = ["a dull, plodding mess", "warm, funny and wise", "the worst film of the decade", "a triumph of style",
           "i could not wait for it to end", "an unexpected delight", "flat characters and a lazy script", "a joy to watch"]


def ensure_run(run: Path | None) -> Path:
    """The run to talk to: ``run``, or a short quickstart run trained once into runs/bench_chat."""
    if run is not None:
        return run
    out = ROOT / "runs" / "bench_chat"
    if not (out / "run.json").is_file() or '"complete"' not in (out / "run.json").read_text():
        subprocess.run([sys.executable, "-m", "xgblora_cli", "train", "recipes/quickstart.yaml", f"output_dir={out}",
                        "train.max_steps=20", "--no-progress", "--force"], check=True, cwd=ROOT)
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks chat_speed", description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, default=None)
    p.add_argument("--tokens", type=int, default=48, help="new tokens per timed answer")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5, help="rounds at least (up to 15 while the spread is wide)")
    args = p.parse_args()
    run = ensure_run(args.run)
    merged_dir = run.parent / f"{run.name}_merged"
    if not (merged_dir / "xgblora_merge.json").is_file():
        merge_run(run, merged_dir, force=True)
    loads, opened = {}, {}
    for name, target in (("run", run), ("merged", merged_dir)):
        started = time.perf_counter()
        opened[name] = open_target(target, device="cpu")
        loads[name] = time.perf_counter() - started
        prepare_for_generation(opened[name].model)
    fixed = Sampling(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    ids = record_prompt(opened["run"].prompt, opened["run"].tokenizer, PROMPT)
    answers: dict[str, list] = {"run": [], "merged": []}

    def one_round(number: int) -> float:
        for name in interleaved(["run", "merged"], number):
            answers[name].append(stream(opened[name].model, opened[name].tokenizer, ids, fixed, lambda text: None))
        return answers["run"][-1].tokens_per_s / answers["merged"][-1].tokens_per_s

    decode = ratio_rounds(one_round, min_rounds=args.rounds)
    first = sorted(a.first_token_s / b.first_token_s for a, b in zip(answers["run"], answers["merged"]))
    for name, rows in answers.items():
        rates = sorted(a.tokens_per_s for a in rows)
        firsts = sorted(a.first_token_s for a in rows)
        print(f"{name:>6}: load {loads[name]:.1f} s, first token {firsts[len(firsts) // 2]:.3f} s, "
              f"{rates[len(rates) // 2]:.1f} tokens/s (median of {len(rows)} answers of {args.tokens} tokens)", flush=True)
    print(f"decode tokens/s, run over merged folder: {decode.text(3)}")
    target = opened["run"]
    prompts = [record_prompt(target.prompt, target.tokenizer, {"instruction": f"Please choose the sentiment of this movie "
                                                                              f"review: {REVIEWS[i % len(REVIEWS)]}\n\nAnswer format: negative/positive", "input": ""})
               for i in range(args.prompts)]

    def batched_round(number: int) -> float:
        started = time.perf_counter()
        together = [a for i in range(0, len(prompts), args.batch) for a in batch(target.model, target.tokenizer, prompts[i:i + args.batch], fixed)]
        batched_rate = sum(a.tokens for a in together) / (time.perf_counter() - started)
        started = time.perf_counter()
        alone = [batch(target.model, target.tokenizer, [prompt], fixed)[0] for prompt in prompts]
        return batched_rate / (sum(a.tokens for a in alone) / (time.perf_counter() - started))

    batched = ratio_rounds(batched_round, min_rounds=3, max_rounds=8)
    print(f"generate, {args.prompts} prompts in batches of {args.batch} over one at a time (tokens/s): {batched.text(2)}")
    print(f"decode_ratio_run_vs_merged={decode.median:.3f} first_token_ratio_run_vs_merged={first[len(first) // 2]:.3f} "
          f"batched_throughput_ratio={batched.median:.2f} batched_throughput_range={batched.low:.2f}-{batched.high:.2f}")


if __name__ == "__main__":
    main()
