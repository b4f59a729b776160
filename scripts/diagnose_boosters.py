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

    .venv/bin/python scripts/diagnose_boosters.py --method xgblora --seed 2 --out runs/diagnose/xgblora_s2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import GLUE_DIR, ROOT, TaskBudget, cut_glue, write_records  # noqa: E402

from xgblora_cli.adapter import LoRALinear  # noqa: E402
from xgblora_cli.data import BatchStream  # noqa: E402
from xgblora_cli.gradient import capture  # noqa: E402
from xgblora_cli.loss import causal_lm_loss  # noqa: E402
from xgblora_cli.models import find_blocks  # noqa: E402
from xgblora_cli.recipe_file import recipe_from_dict  # noqa: E402
from xgblora_cli.rundir import RunDir  # noqa: E402
from xgblora_cli.runner import prepare  # noqa: E402
from xgblora_cli.scoring import score_loglik  # noqa: E402
from xgblora_cli.tasks.choice import load as load_choice  # noqa: E402
from xgblora_cli.train import Trainer  # noqa: E402

BUDGETS = {
    "sst2": TaskBudget("sst2", train=1000, val=200, steps=100, batch=8, seq=128, min_words=5),
    "rte": TaskBudget("rte", train=1040, val=150, steps=100, batch=8, seq=256),
}


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
        from xgblora_cli.boosting import booster_blocks

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    budget = BUDGETS[args.task]
    steps = args.steps or budget.steps
    train, val = cut_glue(args.glue, budget)
    data = {"train": args.work / args.task / "train.jsonl", "val": args.work / args.task / "val.jsonl"}
    write_records(data["train"], args.task, train)
    write_records(data["val"], args.task, val)
    run_dir = args.work / args.task / args.out.stem
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
    out = {"path": str(args.out), "task": args.task, "method": args.method, "seed": args.seed, "steps": steps,
           "recipe": recipe.to_dict(), "plan": setup.plan.__dict__, "windows": [], "start": None}
    trainer.configure(Probe(trainer, data["val"], args.val_n), grad_batches, kappa, out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if setup.plan.num_boosters == 1:
        trainer.after_step = lora_after_step(trainer)
        trainer._window_start(list(range(len(trainer.engine.targets))))
    started = time.perf_counter()
    trainer.fit()
    out["wall_s"] = time.perf_counter() - started
    out["losses"] = [json.loads(line)["loss"] for line in run.metrics_file.read_text().splitlines() if '"loss"' in line]
    args.out.write_text(json.dumps({k: v for k, v in out.items() if k != "path"}))
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
