"""Does a bf16 base pay on this CPU? Step time and validation accuracy of presets with ``dtype: bfloat16`` (the frozen
base in bf16; adapters, optimizer and merges stay fp32-exact) against float32, on GLUE SST-2 (the splits and budget
of benchmarks/quality.py).

- Step time: measured in one invocation, in interleaved rounds (every (method, dtype) once, then again), each a
  fresh ``xgblora train`` of ``--steps`` steps (batch 8, 128 tokens, a new booster every 2 steps); the median step
  after the first two, as float32's over bfloat16's per method and round: above 1, bf16 is faster. Rounds repeat
  (``--rounds`` at least, ``--max-rounds`` at most) until every method's per-round ratio has a known spread
  (``benchmarks.lib.spread_known``); the table gives its median and range. Each timed run is then
  scored on ``--eval-limit`` validation questions (``xgblora eval``'s wall time, loading included), the other half
  of a benchmark's time. It depends on the CPU: bf16 matmuls are fast only with bf16 arithmetic (AMX or
  AVX512-BF16); the CPU's flags are printed with it.
- Accuracy: bench_quality's budget (100 steps of 8) at each method's rate in ``RATES`` (the presets' when measured), validation accuracy
  (held-out training records, never test). The float32 runs are bench_quality's own (same names), so they are
  reused where they exist.

Resumable (finished runs, scores and step times in ``--work`` are reused). Every number is kept as data in
``--results`` (``benchmarks/results/dtype.json``); ``--report-only`` renders the table from it alone. Ends with
``bf16_step_speedup_<method>=X`` per method.

    python -m benchmarks dtype [--methods xgblora lora] [--seeds 0] [--steps 8] [--rounds 2] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from benchmarks.lib import (
    GLUE_DIR,
    OLD_KEYS,
    OLD_RATES,
    ROOT,
    Missing,
    Runner,
    as_ratio,
    cpu_bf16_flags,
    spread,
    spread_known,
    timed_steps,
    train_run,
    write_doc,
)
from benchmarks.quality import BUDGETS, TaskBench

START, END = "<!-- bench_dtype:start -->", "<!-- bench_dtype:end -->"
DTYPES = ["float32", "bfloat16"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=["xgblora", "lora"], choices=list(RATES))
    p.add_argument("--seeds", type=int, nargs="*", default=[0], help="seeds of the accuracy runs (none: step time only)")
    p.add_argument("--steps", type=int, default=8, help="steps of each timed run (the first two are not counted)")
    p.add_argument("--rounds", type=int, default=2, help="rounds at least")
    p.add_argument("--max-rounds", type=int, default=6, help="rounds at most while a speed-up's spread is wide")
    p.add_argument("--eval-limit", type=int, default=50, help="validation questions each timed run is scored on")
    p.add_argument("--glue", type=Path, default=GLUE_DIR)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_quality")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--lrs", nargs="*", default=[])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "dtype.json")
    p.add_argument("--report-only", action="store_true", help="the table from the results file alone; run nothing")
    return p.parse_args()


# What these records were measured with, held fixed whatever the presets become (benchmarks.lib)
RATES, FIXED = OLD_RATES, OLD_KEYS


def extra(dtype: str) -> dict | None:
    """The run's extra recipe keys: none for float32, so that its runs are bench_quality's own."""
    return None if dtype == "float32" else {"dtype": dtype}


def step_times(args: argparse.Namespace, runner: Runner) -> dict[str, list[float]]:
    """Per ``method dtype``, the median step seconds by round, and per ``method dtype eval`` the seconds of scoring
    the round's run (interleaved rounds), cached in the work folder; with ``--report-only``, what the cache holds."""
    cache = args.work / "dtype" / "step_times.json"
    times: dict[str, list[float]] = json.loads(cache.read_text()) if cache.is_file() else {}
    if args.report_only:
        return times
    data = args.work / "sst2" / "train.jsonl"
    for round_ in range(max(args.rounds, args.max_rounds)):
        if round_ >= args.rounds and all(spread_known(per_round(times, method, ""), args.rounds) for method in args.methods):
            break
        for method in args.methods:
            for dtype in DTYPES:
                name = f"{method} {dtype}"
                if len(times.get(name, [])) > round_:
                    continue
                out = args.work / "dtype" / f"{method}_{dtype}_r{round_}"
                times.setdefault(name, []).append(timed_steps(runner, out, data, {"method": method, "dtype": dtype, **FIXED.get(method, {})},
                                                                         args.steps, round_))
                started = time.perf_counter()
                runner.cli("eval", str(out), "--task", "choice", "--data", str(args.work / "sst2" / "val.jsonl"), "--scoring",
                           "label", "--limit", str(args.eval_limit), "--output", str(out / "eval.json"))
                times.setdefault(f"{name} eval", []).append(time.perf_counter() - started)
                # re-read before writing: two invocations (``--methods`` split over two processes) share the cache
                on_disk = json.loads(cache.read_text()) if cache.is_file() else {}
                cache.write_text(json.dumps({**on_disk, name: times[name], f"{name} eval": times[f"{name} eval"]}, indent=1))
    return times


def per_round(times: dict[str, list[float]], method: str, kind: str) -> list[float]:
    """float32's seconds over bfloat16's, one ratio per round both measured (``kind``: "" steps, " eval" scoring)."""
    fp32, bf16 = times.get(f"{method} float32{kind}", []), times.get(f"{method} bfloat16{kind}", [])
    return [a / b for a, b in zip(fp32, bf16)]


def accuracies(bench: TaskBench, args: argparse.Namespace, method: str, dtype: str) -> list[float | None]:
    """Validation accuracy (%) of the method's runs at its default rate, by seed (None: not finished)."""
    found: list[float | None] = []
    for seed in args.seeds:
        try:
            run = train_run(bench.runner, bench.work, bench.budget, bench.data["train"], method,
                            RATES[method], seed, extra(dtype), fixed=FIXED.get(method))
            found.append(bench.val_acc(str(run["dir"]), run["dir"]))
        except Missing:
            found.append(None)
    return found


def table(methods: list[str], times: dict[str, list[float]], accs: dict[str, list[float | None]]) -> tuple[str, dict[str, float]]:
    """The markdown table and the speed-up (float32 step over bfloat16 step, the median of one ratio per round) per
    method."""
    lines = ["| method (default rate) | dtype | s per step, by round | speed-up vs float32, median (range) | s to score (loading "
             "included), by round | speed-up vs float32, median (range) | SST-2 val. accuracy | by seed |", "|---|---|---|---|---|---|---|---|"]
    speedups = {}
    for method in methods:
        for dtype in DTYPES:
            cells = []
            for kind in ("", " eval"):
                own, ratios = times.get(f"{method} {dtype}{kind}"), per_round(times, method, kind)
                ratio = as_ratio(ratios) if ratios and dtype != "float32" else None
                if ratio is not None and not kind:
                    speedups[method] = ratio.median
                cells += [" / ".join(f"{s:.2f}" for s in own or []),
                          f"{ratio.median:.2f}x ({ratio.low:.2f}-{ratio.high:.2f})" if ratio else ("1x" if own else "-")]
            acc = accs.get(f"{method} {dtype}", [])
            done = [a for a in acc if a is not None]
            lines.append(f"| {method} ({RATES[method]:g}) | {dtype} | {' | '.join(cells)} "
                         f"| {spread(done) if done else 'not run yet'} | {' '.join('-' if a is None else f'{a:.1f}' for a in acc)} |")
    return "\n".join(lines), speedups


def rounds(record: dict) -> int:
    """How many interleaved rounds the record's step times hold."""
    return max((len(v) for v in record["times"].values()), default=0)


def render(record: dict) -> tuple[str, dict[str, float]]:
    """The section from the record alone, and the speed-ups."""
    body, speedups = table(record["methods"], record["times"], record["accs"])
    return (f"Command: `{record['command']}`; this CPU's bf16 arithmetic: {', '.join(record['flags']) or 'none (bf16 is emulated)'}; "
            f"{record['steps']}-step runs scored on {record['eval_limit']} questions, {rounds(record)} interleaved rounds; "
            f"validation accuracy (%) at the SST-2 budget, seeds {' '.join(map(str, record['seeds'])) or 'none'}.\n\n{body}"), speedups


def main() -> None:
    args = parse_args()
    if args.report_only:
        if not args.results.is_file():
            raise SystemExit(f"{args.results}: no results file; {args.doc} is left as it is (measure: make bench-dtype)")
        record = json.loads(args.results.read_text())
    else:
        runner = Runner(False)
        bench = TaskBench(args, runner, BUDGETS["sst2"])
        times = step_times(args, runner)
        accs = {f"{m} {d}": accuracies(bench, args, m, d) for m in args.methods for d in DTYPES}
        record = {"command": ("python -m benchmarks dtype " + shlex.join(sys.argv[1:])).strip(), "flags": cpu_bf16_flags(),
                  "steps": args.steps, "eval_limit": args.eval_limit, "rounds": args.rounds, "seeds": args.seeds,
                  "methods": args.methods, "times": times, "accs": accs}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(record, indent=1) + "\n")
    text, speedups = render(record)
    write_doc(args.doc, text, START, END)
    print(text)
    print(" ".join(f"bf16_step_speedup_{m}={r:.2f}" for m, r in speedups.items()))


if __name__ == "__main__":
    main()
