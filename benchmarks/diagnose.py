"""How a booster learns: a training run instrumented at every booster (or, for lora, every kappa steps).

For each window of kappa steps it records, into a JSON file:
  * the training loss of each step (from the run's metrics);
  * a fixed held-out probe (the first ``--val-n`` validation questions): mean answer loss, label accuracy and the
    share of each predicted label, before the window and after its merge (the lean, when it appears);
  * at the window's start, the full-rank gradient dL/dW of every adapted weight, on ``--grad-n`` fixed training
    examples (a low-noise estimate) and on the booster's own first micro-batch; its top singular direction;
    the gradient's Frobenius norm per block (which blocks a gradient-norm choice would pick);
  * at its end, the merged update dW of each weight: its norm, its cosine with ``-u1 v1^T`` (the top rank-1
    direction of the low-noise gradient) and with ``-dL/dW`` itself.
For lora (one adapter for the run) the same is read from the adapter's change over each window.

    python -m benchmarks diagnose --method xgblora --seed 2        # one run: benchmarks/results/diagnosis/xgblora_s2.json
    python -m benchmarks diagnose --report-only                   # the tables in docs/boosters.md from the records
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.lib import (
    GLUE_DIR,
    ROOT,
    cut_glue,
    write_doc,
    write_records,
)
from benchmarks.quality import BUDGETS  # the quality benchmark's data cuts and budgets
from xgblora_cli.core.gradient import capture
from xgblora_cli.core.loss import causal_lm_loss
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.core.train import Trainer
from xgblora_cli.data.batches import BatchStream
from xgblora_cli.evaluation.scoring import score_loglik
from xgblora_cli.evaluation.tasks.choice import load as load_choice
from xgblora_cli.models.loading import find_blocks
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import prepare


def weight_layers(trainer: Trainer, blocks: list[int]) -> dict[str, torch.nn.Module]:
    """``{weight name: the linear layer (or its adapter)}`` of the target weights of ``blocks``."""
    out = {}
    for block in blocks:
        for name, (parent, attr) in trainer.engine.targets[block].items():
            out[name] = getattr(parent, attr)
    return out


def gradients(trainer: Trainer, blocks: list[int], batches: list) -> dict[str, torch.Tensor]:
    """Full-rank dL/dW (fp32) of the target weights of ``blocks``, over ``batches`` (their mean loss)."""
    layers = weight_layers(trainer, blocks)
    leaf = find_blocks(trainer.setup.model)[min(blocks)]
    total: dict[str, torch.Tensor] = {}
    model = trainer.setup.model
    was_training = model.training
    model.train()
    for batch in batches:
        flows = capture(layers, leaf, [batch], lambda b: causal_lm_loss(model, b.to(trainer.setup.device))[0] / len(batches))
        for name, flow in flows.items():
            if flow.inputs:
                g = flow.matrix()
                total[name] = total[name] + g if name in total else g
    model.train(was_training)
    return total


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-30))


class Probe:
    """The fixed held-out set: answer loss, label accuracy and predicted shares of a model."""

    def __init__(self, trainer: Trainer, val_file: Path, n: int) -> None:
        self.trainer = trainer
        setup = trainer.setup
        self.questions = load_choice(val_file).questions[:n]
        records = [json.loads(line) for line in val_file.read_text().splitlines()][:n]
        self.stream = BatchStream(setup.stream.tokenizer, records, 16, setup.prompt, 0)
        self.batches = (n + 15) // 16

    @torch.no_grad()
    def __call__(self) -> dict:
        setup = self.trainer.setup
        model = setup.model
        model.eval()
        losses, counts = 0.0, 0
        for i in range(self.batches):
            loss, count = causal_lm_loss(model, self.stream.batch(i).to(setup.device))
            losses += float(loss) * count
            counts += count
        picks = score_loglik(model, setup.stream.tokenizer, self.questions, setup.prompt, labels=True)
        labels = self.questions[0].labels
        shares = {label: sum(1 for p in picks if p == i) / len(picks) for i, label in enumerate(labels)}
        acc = sum(1 for p, q in zip(picks, self.questions) if p == q.answer) / len(picks)
        model.train()
        return {"loss": losses / max(counts, 1), "acc": acc, "shares": shares}


class Diagnosed(Trainer):
    """A Trainer that measures each window of kappa steps (see the module docstring)."""

    def configure(self, probe: Probe, grad_batches: list, every: int, out: dict) -> None:
        self.probe, self.grad_batches, self.every, self.out = probe, grad_batches, every, out
        self.window: dict = {}
        self.lora_prev: dict[str, torch.Tensor] = {}

    def _window_start(self, blocks: list[int]) -> None:
        started = time.perf_counter()
        setup = self.setup
        first = [setup.stream.batch(self.step * self.args.grad_accum + j) for j in range(self.args.grad_accum)]
        all_blocks = list(range(len(self.engine.targets)))
        full = gradients(self, all_blocks, self.grad_batches)
        block_norms = {b: float(sum(full[n].square().sum() for n in self.engine.targets[b]) ** 0.5) for b in all_blocks}
        big = {name: full[name] for b in blocks for name in self.engine.targets[b]}
        del full
        own = gradients(self, blocks, first)
        tops = {}
        for name, g in big.items():
            u, s, vh = torch.linalg.svd(g, full_matrices=False)
            tops[name] = {"u": u[:, 0], "v": vh[0], "s1": float(s[0]), "fro": float(g.norm()),
                          "s1_share": float(s[0] ** 2 / s.square().sum())}
        self.window = {"start_step": self.step, "blocks": blocks, "big": big, "own": own, "tops": tops,
                       "block_norms": block_norms, "before": self.probe()}
        self.window["probe_s"] = time.perf_counter() - started

    def _window_end(self, deltas: dict[str, torch.Tensor]) -> None:
        w = self.window
        weights = {}
        for name, delta in deltas.items():
            top = w["tops"][name]
            rank1 = torch.outer(top["u"], top["v"])
            own_u, own_s, own_vh = torch.linalg.svd(w["own"][name], full_matrices=False)
            weights[name] = {
                "dw_norm": float(delta.norm()),
                "cos_top": cosine(delta, -rank1),
                "cos_grad": cosine(delta, -w["big"][name]),
                "cos_own_top": cosine(delta, -torch.outer(own_u[:, 0], own_vh[0])),
                "own_vs_big_top": abs(cosine(torch.outer(own_u[:, 0], own_vh[0]), rank1)),
                "grad_fro": top["fro"], "s1_share": top["s1_share"],
            }
        after = self.probe()
        ranked = sorted(w["block_norms"], key=w["block_norms"].get, reverse=True)
        self.out["windows"].append({
            "start_step": w["start_step"], "end_step": self.step, "blocks": w["blocks"],
            "before": w["before"], "after": after, "weights": weights,
            "block_norms": w["block_norms"], "top_blocks_by_grad": ranked[: len(w["blocks"])] if ranked else [],
            "probe_s": w["probe_s"],
        })
        Path(self.out["path"]).write_text(json.dumps({k: v for k, v in self.out.items() if k != "path"}))

    # xgblora / cola: a window per booster
    def _start_booster(self) -> None:
        index = self.step // self.plan.steps_per_booster
        from xgblora_cli.core.boosting import booster_blocks

        blocks = booster_blocks(self.engine.seed, index, self.plan.num_layers, self.plan.layers_per_booster,
                                self.plan.block_schedule)
        if self.plan.num_boosters > 1:
            self._window_start(blocks)
        super()._start_booster()

    def _merge(self, booster) -> None:
        deltas = {name: a.delta() for name, a in booster.adapters.items()}
        super()._merge(booster)
        if self.plan.num_boosters > 1:
            self._window_end(deltas)
        else:
            self.lora_final = deltas


def lora_after_step(trainer: Diagnosed):
    """lora: windows of ``every`` steps, read from the adapter's change over each."""

    def hook(step: int) -> None:
        if step % trainer.every:
            return
        if trainer.booster is not None:
            now = {name: a.delta() for name, a in trainer.booster.adapters.items()}
        else:
            now = trainer.lora_final
        deltas = {name: d - trainer.lora_prev.get(name, torch.zeros_like(d)) for name, d in now.items()}
        trainer.lora_prev = now
        trainer._window_end(deltas)
        if step < trainer.args.max_steps:
            trainer._window_start(list(range(len(trainer.engine.targets))))

    return hook


def compact(value):
    """Floats rounded to 4 significant digits, for a small committed record."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def window_means(window: dict) -> dict[str, float]:
    """A window's per-weight numbers averaged over its weights."""
    weights = window["weights"].values()
    return {k: mean(w[k] for w in weights) for k in ("dw_norm", "cos_top", "cos_grad", "own_vs_big_top", "s1_share")}


def share(probe: dict, label: str) -> str:
    return f"{100 * probe['shares'].get(label, 0):.0f}%"


def booster_table(run: dict, lora: dict | None) -> str:
    """One run, a row per booster (window of kappa steps)."""
    label = sorted(run["windows"][0]["before"]["shares"])[-1]
    lines = [f"| booster (steps) | blocks | training loss, first -> last step | val loss before -> after | val acc before -> after "
             f"| `{label}` share before -> after | mean \\|dW\\| | lora's \\|dW\\| (same steps, same weights) "
             "| cos(dW, top rank-1 of -G) | cos(dW, -G) | top-1 share of \\|G\\|^2 | blocks with the largest \\|G\\| |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    losses = run["losses"]
    for t, w in enumerate(run["windows"]):
        m = window_means(w)
        lora_dw = "-"
        if lora is not None and t < len(lora["windows"]):
            same = [lora["windows"][t]["weights"][n]["dw_norm"] for n in w["weights"] if n in lora["windows"][t]["weights"]]
            lora_dw = f"{mean(same):.3f}"
        steps = losses[w["start_step"]:w["end_step"]]
        b, a = w["before"], w["after"]
        lines.append(
            f"| {t + 1} ({w['start_step'] + 1}-{w['end_step']}) | {', '.join(map(str, w['blocks']))} "
            f"| {steps[0]:.3f} -> {steps[-1]:.3f} | {b['loss']:.3f} -> {a['loss']:.3f} | {100 * b['acc']:.1f} -> {100 * a['acc']:.1f} "
            f"| {share(b, label)} -> {share(a, label)} | {m['dw_norm']:.3f} | {lora_dw} | {m['cos_top']:+.3f} | {m['cos_grad']:+.3f} "
            f"| {m['s1_share']:.2f} | {', '.join(map(str, w['top_blocks_by_grad'][:4]))} |")
    return "\n".join(lines)


def lora_table(run: dict) -> str:
    """The lora run, a row per window of kappa steps (its adapter's change over the window)."""
    label = sorted(run["windows"][0]["before"]["shares"])[-1]
    lines = ["| steps | val loss before -> after | val acc before -> after | "
             f"`{label}` share after | mean \\|dW\\| over all weights | cos(dW, top rank-1 of -G) | cos(dW, -G) |",
             "|---|---|---|---|---|---|---|"]
    for w in run["windows"]:
        m = window_means(w)
        b, a = w["before"], w["after"]
        lines.append(f"| {w['start_step'] + 1}-{w['end_step']} | {b['loss']:.3f} -> {a['loss']:.3f} "
                     f"| {100 * b['acc']:.1f} -> {100 * a['acc']:.1f} | {share(a, label)} | {m['dw_norm']:.3f} "
                     f"| {m['cos_top']:+.3f} | {m['cos_grad']:+.3f} |")
    return "\n".join(lines)


def summary_table(runs: dict[str, dict]) -> str:
    """Per run, boosters 2 onward (after the one that learns the answer format): what a booster's update is."""
    lines = ["| run | val acc at the end | largest answer share | mean \\|dW\\| | cos(dW, top rank-1 of -G) | cos(dW, -G) "
             "| top-1 share of \\|G\\|^2 | a micro-batch's top direction vs 64 examples' (\\|cos\\|) "
             "| boosters whose blocks include one of the 4 largest-gradient blocks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, run in runs.items():
        later = run["windows"][1:]
        if not later:
            continue
        ms = [window_means(w) for w in later]
        hit = sum(1 for w in later if set(w["blocks"]) & set(w["top_blocks_by_grad"][:4]))
        last, end = run["windows"][-1]["after"], run["windows"][-1]["end_step"]
        at = "" if end == run["steps"] else f" (step {end})"
        lines.append(f"| {name} | {100 * last['acc']:.1f}{at} | {100 * max(last['shares'].values()):.0f}% "
                     f"| {mean(m['dw_norm'] for m in ms):.3f} | {mean(m['cos_top'] for m in ms):+.3f} "
                     f"| {mean(m['cos_grad'] for m in ms):+.3f} | {mean(m['s1_share'] for m in ms):.2f} "
                     f"| {mean(m['own_vs_big_top'] for m in ms):.2f} "
                     + (f"| {hit} of {len(later)} |" if len(run['windows'][0]['blocks']) < run['plan']['num_layers'] else "| (all blocks) |"))
    return "\n".join(lines)


def render(folder: Path) -> str:
    """The diagnosis tables from the records in ``folder`` (one JSON per run, named ``<method>_s<seed>.json``)."""
    runs = {path.stem: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    lora = next((run for name, run in runs.items() if name.startswith("lora")), None)
    parts = ["Boosters 2 onward (after the first, which learns the answer format), averaged over a run's boosters "
             "and their weights:", "", summary_table(runs)]
    for name, run in runs.items():
        how = run.get("partial") or f"{run['wall_s'] / 60:.0f} min with the probes"
        parts += ["", f"**{name}** (seed {run['seed']}, {run['steps']} steps; {how}):", ""]
        parts.append(lora_table(run) if run["plan"]["num_boosters"] == 1 else booster_table(run, lora))
    return "\n".join(parts)


START, END = "<!-- diagnosis:start -->", "<!-- diagnosis:end -->"


def run_name(method: str, seed: int, keys: list[str]) -> str:
    """``xgblora_s2`` (plus ``_key-value`` for each ``--set`` key): the record's file name."""
    return f"{method}_s{seed}" + "".join("_" + item.replace("=", "-").replace(".", "") for item in keys)


def diagnose(args: argparse.Namespace, out: Path) -> None:
    """One instrumented run of ``args``, its record written to ``out``."""
    budget = BUDGETS[args.task]
    steps = args.steps or budget.steps
    train, val = cut_glue(args.glue, budget)
    data = {"train": args.work / args.task / "train.jsonl", "val": args.work / args.task / "val.jsonl"}
    write_records(data["train"], args.task, train)
    write_records(data["val"], args.task, val)
    run_dir = args.work / args.task / out.stem
    fields = {"model": "smollm2-135m", "dataset": str(data["train"]), "output_dir": str(run_dir),
              "method": args.method, "seed": args.seed, "dtype": args.dtype,
              "train": {"max_steps": steps, "batch_size": budget.batch, "max_seq_len": budget.seq,
                        "warmup_steps": max(1, steps // 10), "checkpoint_every": steps}}
    recipe = recipe_from_dict(fields, "diagnose", args.set)
    setup = prepare(recipe, "diagnose")
    run = RunDir(run_dir)
    run.check_new(True)
    run.create("{}\n", {"plan": setup.plan.__dict__}, True)
    trainer = Diagnosed(setup, run, show_progress=False)
    kappa = setup.plan.steps_per_booster if setup.plan.num_boosters > 1 else 10
    grad_stream = BatchStream(setup.stream.tokenizer, setup.stream.records, 8, setup.prompt, 12345)
    grad_batches = [grad_stream.batch(i) for i in range(args.grad_n // 8)]
    record = {"path": str(out), "task": args.task, "method": args.method, "seed": args.seed, "steps": steps,
              "keys": args.set, "plan": setup.plan.__dict__, "windows": []}
    trainer.configure(Probe(trainer, data["val"], args.val_n), grad_batches, kappa, record)
    out.parent.mkdir(parents=True, exist_ok=True)
    if setup.plan.num_boosters == 1:
        trainer.after_step = lora_after_step(trainer)
        trainer._window_start(list(range(len(trainer.engine.targets))))
    started = time.perf_counter()
    trainer.fit()
    record["wall_s"] = time.perf_counter() - started
    record["losses"] = [json.loads(line)["loss"] for line in run.metrics_file.read_text().splitlines() if '"loss"' in line]
    out.write_text(json.dumps(compact({k: v for k, v in record.items() if k != "path"}), indent=None) + "\n")
    print(f"wrote {out}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks diagnose", description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=list(BUDGETS), default="sst2")
    p.add_argument("--method", default="xgblora")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more recipe keys")
    p.add_argument("--grad-n", type=int, default=64, help="fixed training examples for the low-noise gradient")
    p.add_argument("--val-n", type=int, default=200)
    p.add_argument("--glue", type=Path, default=GLUE_DIR)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "diagnose")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "diagnosis",
                   help="one JSON record per run (method_sSEED.json)")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "boosters.md")
    p.add_argument("--report-only", action="store_true", help="render the tables from --results into --doc; run nothing")
    args = p.parse_args()
    if not args.report_only:
        diagnose(args, args.results / f"{run_name(args.method, args.seed, args.set)}.json")
    if not any(args.results.glob("*.json")):
        raise SystemExit(f"{args.results}: no diagnosis records; {args.doc} is left as it is")
    write_doc(args.doc, render(args.results), START, END)


if __name__ == "__main__":
    main()
