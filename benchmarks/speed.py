"""Training-step time and peak memory: xgblora (the preset's rank and k unless given) vs our `lora` preset vs PEFT LoRA.

Each method runs in its own fresh process (so peak RSS is its own) on the same model, batch and sequence
length, back to back in one invocation, in interleaved rounds (xgblora, lora, peft, xgblora, ...) so that a
drift in background load hits every method alike. A step is forward + backward + AdamW on a fixed random batch
whose every position carries a label. xgblora draws a new booster (new random blocks, seeded by the round) for
every step, so the median covers the spread of backward depths; since a few draws can sit deeper or shallower
than a long run's average, it also prints each timed step's lowest adapted block and the step time a line fit
gives at the long-run mean depth. PEFT (benchmark-only dependency) uses its standard HF loss.

    python -m benchmarks speed [--model smollm2-135m] [--batch 8] [--seq 256] [--steps 5] [--rounds 2] [--k 4]
        [--booster-init gradient] [--block-schedule gradient] [--init-batches 1] [--kappa 10] [--dtype bfloat16]

With a booster started from the gradient, each xgblora step carries its booster's start over kappa (the ``probe``
phase: V set inside the booster's first step, or a probe pass where ``--init-batches`` exceeds the step's one
micro-batch or ``--block-schedule`` probes every block; the first step's recording hooks count once in kappa steps, a
plain step of the same booster the other kappa - 1). Ends with ``step_time_ratio_vs_lora=X step_time_ratio_vs_lora_range=LO-HI`` (xgblora over our lora
preset: the median and range of one ratio per interleaved round, rounds repeated until that spread is known) and
``step_time_ratio_vs_peft=X step_time_ratio_vs_peft_range=LO-HI peak_mem_ratio_vs_peft=Y`` (xgblora over PEFT LoRA
r=8 on all blocks, per round the same way; memory: the peaks over all rounds).
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

from xgblora_cli.recipe import PRESETS

from benchmarks.lib import ROOT, as_ratio, ratio_rounds

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch(vocab: int, size: int, seq: int):
    from xgblora_cli.data.batches import Batch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (size, seq), generator=g)
    return Batch(ids, torch.ones_like(ids), ids.clone())


PHASES = ("forward+loss", "backward", "optimizer", "probe")


def timed_step(forward, optimizer, after_backward=None) -> dict[str, float]:
    """One training step, timed by phase. ``forward()`` returns the loss; for the engine it also forms the
    hidden-state gradient of the output head (loss.py), which PEFT leaves to its backward. ``after_backward``
    (a booster's first step setting V from the gradient) runs before the optimizer: the ``probe`` phase."""
    t0 = time.perf_counter()
    loss = forward()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    if after_backward is not None:
        after_backward()
    t3 = time.perf_counter()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    t4 = time.perf_counter()
    return dict(zip(PHASES, (t1 - t0, t2 - t1, t4 - t3, t3 - t2)))


def amortised(first: dict[str, float], later: dict[str, float] | None, probe_s: float, kappa: int) -> dict[str, float]:
    """One xgblora step as a booster of ``kappa`` steps averages it: its start (``probe_s``, a probe pass before
    the first step, and the first step's own ``probe`` phase, the power iteration) divided by kappa; and where
    the first step carried the start's recording hooks (``later``: a plain step of the same booster, timed
    after it), the other phases weighted 1 for the first step and kappa - 1 for the plain ones, as training
    runs them. Without ``later`` every step is alike and the first step's phases are the step's."""
    start = (probe_s + first["probe"]) / kappa
    if later is None:
        return {**first, "probe": start}
    mixed = {phase: (first[phase] + (kappa - 1) * later[phase]) / kappa for phase in PHASES if phase != "probe"}
    return {**mixed, "probe": start}


def engine_steps(model, model_dir, method: str, args, data) -> tuple[list[dict[str, float]], list[int]]:
    """xgblora or the lora preset, through the product's own engine and loss; also each step's lowest adapted
    block (backward runs from the head down to it, so it sets most of the spread between xgblora's steps). With
    ``--block-schedule gradient*`` each xgblora step also pays its booster's probe through every block, and with
    ``--booster-init gradient`` the setting of V inside the booster's first step (training's FirstStepInit: its
    flows recorded in the step's forward and backward, then the power iteration), both divided by ``--kappa`` (a
    booster does them once, at its start): the ``probe`` phase. A booster whose V is set inside its first step
    is timed twice, that first step (with the start's recording hooks) and a plain second one, weighted as
    training runs them (:func:`amortised`)."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from xgblora_cli.core.boosting import BoostingEngine
    from xgblora_cli.core.loss import causal_lm_loss
    from xgblora_cli.core.probe import BoosterProbe, FirstStepInit
    from xgblora_cli.core.train import make_optimizer
    from xgblora_cli.models.loading import find_blocks
    from xgblora_cli.recipe import BoosterPlan, TrainArgs

    layers = len(find_blocks(model))
    rank, k = (args.rank, args.k) if method == "xgblora" else (8, layers)
    probing = method == "xgblora"
    plan = BoosterPlan(rank, 2.0 * rank, k, args.kappa, args.steps, layers,
                       args.block_schedule if probing else "random", args.booster_init if probing else "random", args.init_batches)
    engine = BoostingEngine(model, plan, TARGETS, args.seed, args.checkpointing)
    setup = SimpleNamespace(model=model, device=torch.device("cpu"), stream=SimpleNamespace(batch=lambda m, part=None: data),
                            recipe=SimpleNamespace(train=SimpleNamespace(batch_size=args.batch, grad_accum=1)))
    probe = BoosterProbe(engine, setup)
    times, lowest = [], []
    for step in range(args.steps):
        blocks, init, probe_s = None, None, 0.0
        fused = probe.sets_v_in_step(0, 1)  # as training: one micro-batch a step
        if probe.needs_pass(fused):
            started = time.perf_counter()
            blocks, init = probe.start(step, 0, directions=not fused)
            probe_s = time.perf_counter() - started
        booster = engine.start(step, 0, blocks, init)
        first = FirstStepInit(probe, booster) if fused else None
        optimizer = make_optimizer(booster, TrainArgs(), 1e-4)
        forward = lambda: causal_lm_loss(model, data)[0]  # noqa: E731
        with first if first is not None else nullcontext():
            phases = timed_step(forward, optimizer, first.apply if first else None)
        later = timed_step(forward, optimizer) if first is not None else None
        times.append(amortised(phases, later, probe_s, args.kappa))
        lowest.append(min(booster.blocks))
        engine.discard(booster)
    return times, lowest


def peft_steps(model, args, data) -> list[dict[str, float]]:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS, lora_dropout=0.0))
    if args.checkpointing:
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    forward = lambda: peft_model(input_ids=data.input_ids, attention_mask=data.attention_mask, labels=data.labels).loss  # noqa: E731
    return [timed_step(forward, optimizer) for _ in range(args.steps)]


def run_one(method: str, args) -> dict:
    from xgblora_cli.models.loading import find_blocks, load_model
    from xgblora_cli.models.sources import resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    model = load_model(model_dir, args.dtype)
    model.train()
    data = batch(model.config.vocab_size, args.batch, args.seq)
    loaded = rss_mb()
    if method == "peft":
        times, lowest = peft_steps(model, args, data), []  # PEFT adapts every block: no draws
    else:
        times, lowest = engine_steps(model, model_dir, method, args, data)
    skip = 1 if len(times) > 1 else 0  # the first step warms up allocator and kernels
    return {"method": method, "steps": times[skip:], "lowest_blocks": lowest[skip:], "peak_rss_mb": rss_mb(),
            "rss_after_load_mb": loaded, "num_layers": len(find_blocks(model))}


def medians(steps: list[dict[str, float]]) -> dict[str, float]:
    """Median seconds of the whole step and of each phase."""
    out = {"step": statistics.median(sum(s.values()) for s in steps)}
    return out | {phase: statistics.median(s[phase] for s in steps) for phase in PHASES}


def draw_summary(lowest: list[int], num_layers: int, k: int) -> str:
    """How deep xgblora's timed backward passes went, against the mean over all draws of k of ``num_layers``
    blocks (the lowest of k uniform picks sits at (L - k) / (k + 1) on average, 0-based): a median taken over
    unusually low draws overstates the step time a long run averages."""
    return (f"xgblora lowest adapted block per timed step: {lowest} (mean {statistics.mean(lowest):.1f}; "
            f"a long run averages {mean_lowest(num_layers, k):.1f})")


def mean_lowest(num_layers: int, k: int) -> float:
    """Expected lowest of k distinct blocks drawn uniformly from ``num_layers`` (0-based)."""
    return (num_layers - k) / (k + 1)


def step_at_mean_depth(steps: list[dict[str, float]], lowest: list[int], num_layers: int, k: int) -> float | None:
    """xgblora's step time at the long-run mean depth: a least-squares line of step time against the lowest
    adapted block, read at :func:`mean_lowest`. None when the draws do not span two depths."""
    if len(set(lowest)) < 2:
        return None
    fit = statistics.linear_regression(lowest, [sum(s.values()) for s in steps])
    return fit.intercept + fit.slope * mean_lowest(num_layers, k)


def run_round(args: argparse.Namespace, round_: int, methods: list[str], rows: dict[str, dict]) -> dict[str, dict]:
    """One interleaved round: each method in its own fresh process, in turn; its steps pooled into ``rows``."""
    for method in methods:
        cmd = [sys.executable, "-m", "benchmarks", "speed", "--one", method, "--model", args.model, "--batch", str(args.batch),
               "--seq", str(args.seq), "--steps", str(args.steps), "--k", str(args.k), "--rank", str(args.rank), "--seed", str(round_),
               "--booster-init", args.booster_init, "--block-schedule", args.block_schedule,
               "--init-batches", str(args.init_batches), "--kappa", str(args.kappa), "--dtype", args.dtype]
        cmd += ["--checkpointing"] if args.checkpointing else []
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"{method} failed:\n{out.stderr[-2000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{method:>8} round {round_ + 1}: median step {medians(result['steps'])['step']:.2f} s   "
              f"peak RSS {result['peak_rss_mb']:.0f} MB (after model load {result['rss_after_load_mb']:.0f} MB)", flush=True)
        row = rows.setdefault(method, {"steps": [], "lowest_blocks": [], "peak_rss_mb": 0.0, "round_medians": []})
        row["round_medians"].append(medians(result["steps"])["step"])
        row["steps"] += result["steps"]
        row["lowest_blocks"] += result["lowest_blocks"]
        row["num_layers"] = result["num_layers"]
        row["peak_rss_mb"] = max(row["peak_rss_mb"], result["peak_rss_mb"])
    return rows


def xgblora_over_lora(rows: dict[str, dict]) -> float:
    """The latest round's xgblora median step over lora's."""
    return rows["xgblora"]["round_medians"][-1] / rows["lora"]["round_medians"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description="xgblora vs lora preset vs PEFT LoRA: step time and peak memory")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (the first is not counted)")
    parser.add_argument("--k", type=int, default=PRESETS["xgblora"].layers_per_booster, help="xgblora blocks per booster (the preset's)")
    parser.add_argument("--rank", type=int, default=PRESETS["xgblora"].rank, help="xgblora's adapter rank (the preset's)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing for all methods")
    parser.add_argument("--booster-init", default=PRESETS["xgblora"].booster_init, choices=["random", "gradient"],
                        help="xgblora's booster init (default: the preset's)")
    parser.add_argument("--block-schedule", default="random", choices=["random", "gradient", "gradient_sample"],
                        help="xgblora's block choice")
    parser.add_argument("--init-batches", type=int, default=1, help="micro-batches of xgblora's probe")
    parser.add_argument("--kappa", type=int, default=10, help="steps per booster: a probe's cost is divided by it")
    parser.add_argument("--methods", default="xgblora,lora,peft")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the base weights' dtype (adapters fp32)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per method, interleaved; medians pool all "
                        "(with xgblora and lora: rounds at least, repeated while the spread of their ratio is wide)")
    parser.add_argument("--max-rounds", type=int, default=8, help="rounds at most while the spread is wide")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return
    rows: dict[str, dict] = {}
    methods = args.methods.split(",")
    if "xgblora" in methods and "lora" in methods:  # one ratio per interleaved round, repeated until its spread is known
        ratio = ratio_rounds(lambda number: xgblora_over_lora(run_round(args, number, methods, rows)),
                             min_rounds=args.rounds, max_rounds=max(args.rounds, args.max_rounds))
    else:
        ratio = None
        for round_ in range(args.rounds):
            run_round(args, round_, methods, rows)
    for method, row in rows.items():
        row |= medians(row["steps"])
        phases = "  ".join(f"{phase} {row[phase]:.2f}" for phase in PHASES)
        print(f"{method:>8}: median step {row['step']:.2f} s over {len(row['steps'])} steps ({phases})   "
              f"peak RSS {row['peak_rss_mb']:.0f} MB")
    print(f"model={args.model} batch={args.batch} seq={args.seq} steps={args.steps} rounds={len(next(iter(rows.values()))['round_medians'])} k={args.k} rank={args.rank} "
          f"checkpointing={args.checkpointing} dtype={args.dtype}")
    if "xgblora" in rows:
        x = rows["xgblora"]
        print(draw_summary(x["lowest_blocks"], x["num_layers"], args.k))
        fitted = step_at_mean_depth(x["steps"], x["lowest_blocks"], x["num_layers"], args.k)
        if fitted is not None and "peft" in rows:
            print(f"xgblora step at the long-run mean depth (line fit over the timed steps): {fitted:.2f} s, "
                  f"{fitted / rows['peft']['step']:.3f}x PEFT's median")
    if ratio is not None:
        print(f"xgblora step over lora's, per round (probe included, over kappa {args.kappa}): {ratio.text(3)}")
        print(f"step_time_ratio_vs_lora={ratio.median:.3f} step_time_ratio_vs_lora_range={ratio.low:.3f}-{ratio.high:.3f}")
    if "xgblora" in rows and "peft" in rows:
        x, p = rows["xgblora"], rows["peft"]
        vs_peft = as_ratio([a / b for a, b in zip(x["round_medians"], p["round_medians"])])
        print(f"step_time_ratio_vs_peft={vs_peft.median:.3f} step_time_ratio_vs_peft_range={vs_peft.low:.3f}-{vs_peft.high:.3f} "
              f"peak_mem_ratio_vs_peft={x['peak_rss_mb'] / p['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
