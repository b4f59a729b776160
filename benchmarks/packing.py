"""Sequence packing against padding: useful tokens per second of training, same model, same batch token budget.

Two datasets: SST-2-length (the shipped ``data/sst2_train_2000.jsonl``, about 70 tokens an example with SmolLM2's
chat template) and Alpaca-length (``../shared/data/alpaca/alpaca_en_demo.json`` where present, else the shipped
ARC-Easy slice). Per dataset, batches of ``--batch`` rows and at most ``--seq`` tokens: padded (one example a
row, padded to the batch's longest) and packed (``train.packing``: rows of ``--seq`` tokens holding several
examples). Each step is a real xgblora training step (forward, backward, AdamW) through the product's engine and
loss, on the same booster blocks for both; the two kinds alternate so load drifts hit both alike. Useful
tokens are the non-padding ones; labelled tokens, those the loss is taken on.

    .venv/bin/python -m benchmarks packing [--batch 8] [--seq 256] [--steps 5] [--max-rounds 15]

Ends with ``packing_speedup_short=<x> packing_speedup_short_range=<lo>-<hi> packing_speedup_long=...``: the
median over interleaved rounds of useful tokens per second, packed over padded, and its range (rounds repeat
until the quartiles lie within 10% of the median, or 15 rounds).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.lib import Ratio, interleaved, ratio_rounds
from xgblora_cli.core.boosting import BoostingEngine
from xgblora_cli.core.loss import causal_lm_loss
from xgblora_cli.core.train import make_optimizer
from xgblora_cli.data.batches import BatchStream
from xgblora_cli.data.formats import load_records
from xgblora_cli.data.prompts import IGNORE, PromptFormat
from xgblora_cli.models.loading import load_model, load_tokenizer
from xgblora_cli.models.sources import resolve_model_dir
from xgblora_cli.recipe import DEFAULT_TARGETS, BoosterPlan, TrainArgs

ROOT = Path(__file__).resolve().parent.parent
ALPACA = ROOT.parent / "shared" / "data" / "alpaca" / "alpaca_en_demo.json"


def step_rate(model, engine: BoostingEngine, batches: list) -> list[tuple[float, int, int]]:
    """(seconds, non-padding tokens, labelled tokens) of one training step per batch, on one booster."""
    booster = engine.start(0)
    optimizer = make_optimizer(booster, TrainArgs(), 1e-3)
    out = []
    for batch in batches:
        started = time.perf_counter()
        loss, _ = causal_lm_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out.append((time.perf_counter() - started, batch.num_tokens, int((batch.labels[:, 1:] != IGNORE).sum())))
    engine.finish(booster)
    return out


def measure(model, engine, tokenizer, records: list[dict], args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], Ratio]:
    """Per kind, tokens per second over all timed steps; and the packed-over-padded ratio of useful tokens per
    second over interleaved rounds (each round one padded and one packed step on its own batches, the order
    alternating), repeated until its spread is known."""
    fmt = PromptFormat.resolve(tokenizer, "auto", args.seq)
    streams = {kind: BatchStream(tokenizer, records, args.batch, fmt, seed=0, packing=kind == "packed") for kind in ("padded", "packed")}
    for stream in streams.values():  # warm-up, not counted
        step_rate(model, engine, [stream.batch(0)])
    results: dict[str, list] = {"padded": [], "packed": []}

    def one_round(number: int) -> float:
        rate = {}
        for kind in interleaved(["padded", "packed"], number):
            timed = step_rate(model, engine, [streams[kind].batch(number + 1)])
            results[kind] += timed
            rate[kind] = timed[0][1] / timed[0][0]
        return rate["packed"] / rate["padded"]

    ratio = ratio_rounds(one_round, min_rounds=args.steps, max_rounds=args.max_rounds)
    summary = {}
    for kind, rows in results.items():
        seconds = sum(r[0] for r in rows)
        summary[kind] = {"useful_per_s": sum(r[1] for r in rows) / seconds, "labelled_per_s": sum(r[2] for r in rows) / seconds,
                         "step_s": statistics.median(r[0] for r in rows), "useful_per_step": statistics.mean(r[1] for r in rows)}
    return summary, ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="interleaved rounds at least (one padded and one packed step each)")
    p.add_argument("--max-rounds", type=int, default=15, help="rounds at most, while the spread is still wide")
    args = p.parse_args()
    model_dir = resolve_model_dir(args.model)
    model, tokenizer = load_model(model_dir, "float32"), load_tokenizer(model_dir)
    layers = model.config.num_hidden_layers
    engine = BoostingEngine(model, BoosterPlan(1, 2.0, 4, 1, 1, layers), DEFAULT_TARGETS, 0)
    long_source = ALPACA if ALPACA.is_file() else ROOT / "data" / "arc_easy_train_600.jsonl"
    datasets = {"short": ROOT / "data" / "sst2_train_2000.jsonl", "long": long_source}
    speedups = {}
    for name, path in datasets.items():
        result, ratio = measure(model, engine, tokenizer, load_records(str(path)), args)
        for kind, r in result.items():
            print(f"{name:>5} ({path.name}) {kind:>6}: {r['useful_per_s']:7.1f} useful tok/s, {r['labelled_per_s']:6.1f} labelled tok/s, "
                  f"{r['useful_per_step']:6.0f} useful tokens a step, median step {r['step_s']:.2f} s", flush=True)
        print(f"{name:>5}: packed over padded, useful tokens/s per round: {ratio.text()}", flush=True)
        speedups[name] = ratio
    print(" ".join(f"packing_speedup_{name}={r.median:.2f} packing_speedup_{name}_range={r.low:.2f}-{r.high:.2f}"
                   for name, r in speedups.items()))


if __name__ == "__main__":
    main()
