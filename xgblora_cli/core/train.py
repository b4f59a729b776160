"""The training loop: boosters of kappa optimizer steps, one global LR schedule, metrics, checkpoints, resume.

The loop is the same for every method; the plan (rank, k, kappa) decides whether it is XGBLoRA, COLA or LoRA.
Order of durable writes at the end of a booster: its factors into the record, then the checkpoint that says
the booster is merged. A crash between the two is repaired on resume by truncating the record to the
checkpoint's count, so a booster is never merged twice. With ``average_last`` the tail average is appended after
the last booster and before the final checkpoint, under the same rule. Loading, checks and the run directory's
creation are :mod:`xgblora_cli.runner`'s; this module only trains what it is given.
"""

from __future__ import annotations

import math
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.progress import NoProgress, TrainProgress
from xgblora_cli.common.runtime import SINGLE, Ranks
from xgblora_cli.core.averaging import tail_average
from xgblora_cli.core.boosting import ActiveBooster, BoostingEngine
from xgblora_cli.core.loss import causal_lm_loss
from xgblora_cli.core.merge import FactorStack, apply_record, write_merged
from xgblora_cli.core.probe import BoosterProbe, FirstStepInit
from xgblora_cli.core.record import BoosterFactors, Record
from xgblora_cli.core.rundir import Checkpoint, RunDir
from xgblora_cli.data.batches import BatchStream
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.models.base_weights import BaseWeights
from xgblora_cli.models.sharding import root_gathered
from xgblora_cli.recipe import BoosterPlan, Recipe, TrainArgs


def lr_at(step: int, booster_start: int, args: TrainArgs, peak: float, rewarmup_steps: int = 0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``peak``, cosine decay over all steps
    to ``min_lr_ratio``, times a linear re-warmup over the first ``rewarmup_steps`` of each booster (0: none;
    the recipe's resolved value, Recipe.rewarmup_steps)."""
    if step < args.warmup_steps:
        factor = (step + 1) / args.warmup_steps
    else:
        span = max(1, args.max_steps - args.warmup_steps)
        progress = min(1.0, (step - args.warmup_steps) / span)
        factor = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if rewarmup_steps:
        factor *= min(1.0, (step - booster_start + 1) / rewarmup_steps)
    return peak * factor


def make_optimizer(booster: ActiveBooster, args: TrainArgs, peak: float) -> torch.optim.Optimizer:
    """A fresh AdamW over this booster's adapters only (moments of merged boosters are gone): V (``lora_a``) and U
    (``lora_b``) in two groups when U's rate is ``train.u_lr_ratio`` (not 1) times V's (LoRA+). Parameter order
    follows :meth:`ActiveBooster.parameters`, so checkpoints and carried moments match position for position."""
    params = booster.parameters()
    if args.u_lr_ratio == 1.0:  # one group, as runs before u_lr_ratio had (their checkpoints resume alike)
        return torch.optim.AdamW(params, lr=peak, weight_decay=args.weight_decay)
    groups = [{"params": params[0::2], "lr": peak, "lr_ratio": 1.0},
              {"params": params[1::2], "lr": peak * args.u_lr_ratio, "lr_ratio": args.u_lr_ratio}]
    return torch.optim.AdamW(groups, lr=peak, weight_decay=args.weight_decay)


def set_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the step's rate: ``lr`` times each group's ``lr_ratio``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)


def carry_second_moments(optimizer: torch.optim.Optimizer, previous: dict[int, dict[str, torch.Tensor]]) -> int:
    """Start a fresh AdamW from the second moments and step counts of ``previous`` (``state_dict()["state"]`` of
    the last merged booster's AdamW), matched by parameter position, where the shapes agree (every block of a
    LLaMA-like model has the same shapes, so slot i of one booster maps to slot i of the next). First moments
    start at zero: with the carried step count Adam's bias correction no longer scales them up, so each booster's
    first updates are damped (a built-in short warmup). Returns how many parameters were seeded."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    seeded = 0
    for index, param in enumerate(params):
        old = previous.get(index)
        if old is None or "exp_avg_sq" not in old or old["exp_avg_sq"].shape != param.shape:
            continue
        optimizer.state[param] = {
            "step": old["step"].detach().clone().to(torch.float32),
            "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
            "exp_avg_sq": old["exp_avg_sq"].detach().clone().to(param.device, param.dtype),
        }
        seeded += 1
    return seeded


class MetricsSink(Protocol):
    """Where metrics rows are streamed besides metrics.jsonl (TensorBoard / W&B: :mod:`xgblora_cli.tracking`)."""

    def log(self, row: dict) -> None: ...


@dataclass
class Setup:
    """Everything a run needs, built (and validated) before anything is written."""

    recipe: Recipe
    plan: BoosterPlan
    model_dir: Path
    model: nn.Module
    stream: BatchStream
    trainable: int
    device: torch.device
    prompt: PromptFormat
    ranks: Ranks = SINGLE


class Trainer:
    """Runs the boosting loop of ``setup`` into ``run``, from scratch or from its checkpoint."""

    fuse_init = True
    """Set V (booster_init: gradient) inside each booster's first optimizer step when its micro-batches cover
    init_batches (:class:`FirstStepInit`); False: always by a probe pass of its own (the tests compare the two)."""

    def __init__(self, setup: Setup, run: RunDir, show_progress: bool = True,
                 after_step: Callable[[int], None] | None = None, trackers: MetricsSink | None = None) -> None:
        self.setup = setup
        self.args = setup.recipe.train
        self.peak_lr = setup.recipe.learning_rate
        self.rewarmup_steps = setup.recipe.rewarmup_steps
        self.plan = setup.plan
        self.run = run
        self.record = Record(run.path)
        self.ranks = setup.ranks
        self.show_progress = show_progress and self.ranks.main
        self.after_step = after_step  # a test's fault injection (runtime.fault_injection), else None
        self.trackers = trackers  # TensorBoard / W&B (rank 0), fed every metrics row
        torch.manual_seed(setup.recipe.seed)
        self.base = BaseWeights(setup.model_dir)
        self.stack = FactorStack()  # the merged boosters' factors: the record, in memory
        self.tail: deque[BoosterFactors] = deque(maxlen=max(1, self.plan.average_last))  # the last merged, for average_last
        self.engine = BoostingEngine(
            setup.model, setup.plan, setup.recipe.target_modules, setup.recipe.seed,
            gradient_checkpointing=self.args.gradient_checkpointing,
        )
        self.step = 0
        self.attempt = 0  # retries of the current booster window after divergence
        self.failures = 0  # consecutive discarded boosters
        self.booster: ActiveBooster | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.carried: dict = {}  # train.carry_moments: the last merged booster's AdamW state, for the next one
        self.probe = BoosterProbe(self.engine, setup, self.ranks)
        self.first_step: FirstStepInit | None = None  # V still to set inside the booster's first step

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint: replay the record, rebuild the booster in flight and its optimizer."""
        if self.ranks.main:
            self.record.truncate(ckpt.recorded)
        boosters = self.record.load()[: ckpt.recorded]
        self.stack = apply_record(self.setup.model, self.base, boosters)
        self.tail.extend(boosters)
        self.step = ckpt.step
        self.attempt, self.failures = ckpt.attempt, ckpt.failures
        if ckpt.booster is not None:
            self.booster = self.engine.start(ckpt.booster, ckpt.attempt, ckpt.blocks)  # A and B: the checkpoint's
            self.booster.load_tensors(ckpt.adapters)
            self.optimizer = make_optimizer(self.booster, self.args, self.peak_lr)
            self.optimizer.load_state_dict(ckpt.optimizer)
        elif self.args.carry_moments:  # between boosters the checkpoint holds the moments to carry
            self.carried = ckpt.optimizer["state"]
        torch.set_rng_state(ckpt.rng)
        if self.ranks.main:
            self.run.truncate_metrics(ckpt.step)

    def _log(self, row: dict) -> None:
        if self.ranks.main:
            self.run.log(row)
            if self.trackers is not None:
                self.trackers.log(row)

    def _checkpoint(self) -> None:
        if not self.ranks.main:
            return
        booster = self.booster
        self.run.save_checkpoint(Checkpoint(
            step=self.step,
            recorded=len(self.record),
            booster=None if booster is None else booster.index,
            blocks=None if booster is None else booster.blocks,
            adapters={} if booster is None else booster.tensors(),
            optimizer={"state": self.carried} if self.optimizer is None else self.optimizer.state_dict(),
            rng=torch.get_rng_state(),
            attempt=self.attempt,
            failures=self.failures,
        ))

    def _merge(self, booster: ActiveBooster) -> None:
        """Fold a finished booster into the weights exactly and append it to the record (rank 0 writes)."""
        factor = self.probe.merge_scale(booster, self.step) if self.plan.merge_search_batches else 1.0
        done = self.engine.finish(booster, factor)
        self._fold_in(done, f"booster {done.index + 1}")
        self.tail.append(done)
        self._log({"step": self.step, "event": "booster_merged", "booster": done.index, "blocks": done.blocks,
                   **({"merge_scale": factor} if self.plan.merge_search_batches else {})})
        if self.args.carry_moments and self.optimizer is not None:
            self.carried = self.optimizer.state_dict()["state"]
        self.booster, self.optimizer = None, None
        self.failures = 0

    def _fold_in(self, entry: BoosterFactors, what: str) -> None:
        """Merge a record entry into the weights exactly and append it to the record at this step (rank 0 writes),
        once every rank holds the same ``what``."""
        self.ranks.check_same(entry.digest(), what)
        write_merged(self.setup.model, self.base, self.stack, self.stack.add(entry))
        if self.ranks.main:
            self.record.append(entry, self.step)

    def _average_tail(self) -> None:
        """End on the mean of the weights at the last ``average_last`` booster ends: one more record entry
        (:func:`~xgblora_cli.core.averaging.tail_average`), merged exactly like a booster, written before the
        final checkpoint so a resume never appends it twice."""
        tail = list(self.tail)
        if len(tail) < 2:
            return
        self._fold_in(tail_average(tail), "the tail average")
        self._log({"step": self.step, "event": "tail_averaged", "boosters": [b.index for b in tail]})

    def _start_booster(self) -> None:
        """Attach the booster of this step's window and its fresh optimizer; with a gradient block schedule or
        gradient init, the loss gradient on the window's first micro-batches chooses its blocks or sets V first."""
        index = self.step // self.plan.steps_per_booster
        fused = self.fuse_init and self.probe.sets_v_in_step(self.attempt, self.args.grad_accum)
        blocks, init = (self.probe.start(index, self.step, self.attempt, directions=not fused)
                        if self.probe.needs_pass(fused) else (None, None))
        self.booster = self.engine.start(index, self.attempt, blocks, init)
        self.first_step = FirstStepInit(self.probe, self.booster) if fused else None
        self.optimizer = make_optimizer(self.booster, self.args, self.peak_lr)
        carry_second_moments(self.optimizer, self.carried)

    def _snapshot(self) -> None:
        """Keep the state after this step (the record's length and the booster in flight) for eval --step."""
        booster = self.booster
        factors = {} if booster is None else {name: a.factors() for name, a in booster.adapters.items()}
        self.run.save_snapshot(self.step, len(self.record), factors)

    def _discard(self, loss: float, bar) -> None:
        """Throw away a diverged booster (never merged); stop after too many in a row."""
        booster = self.booster
        assert booster is not None
        self.engine.discard(booster)
        self.booster, self.optimizer = None, None
        self.failures += 1
        self.attempt += 1
        reason = "non-finite loss" if not math.isfinite(loss) else "non-finite adapter weights"
        self._log({"step": self.step, "event": "booster_discarded", "booster": booster.index,
                      "attempt": booster.attempt, "reason": reason})
        bar.note(f"step {self.step}: booster {booster.index + 1} diverged ({reason}); discarded, not merged")
        if self.failures >= self.args.max_failed_boosters:
            self._checkpoint()
            raise UserError(
                f"training diverged: {self.failures} boosters in a row were discarded (train.max_failed_boosters); "
                f"lower train.learning_rate (now {self.peak_lr:g}) and --resume, or start again"
            )

    def _train_step(self) -> tuple[float, int]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, tokens seen)."""
        assert self.booster is not None and self.optimizer is not None
        lr = lr_at(self.step, self.booster.index * self.plan.steps_per_booster, self.args, self.peak_lr,
                   self.rewarmup_steps)
        set_rate(self.optimizer, lr)
        self.setup.model.train()
        with root_gathered(self.setup.model):  # a sharded base: its root unit whole while the loss reads the head
            total_loss, tokens = self._accumulate()
        self.first_step = None
        self.ranks.sum_grads_(self.booster.parameters())
        total_loss, tokens = float(self.ranks.sum_(total_loss)), int(self.ranks.sum_(tokens))
        if self.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.booster.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, tokens

    def _accumulate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of this rank's part of every micro-batch; (its share of the mean loss, its tokens)."""
        ranks, part = self.ranks, self.ranks.slice(self.args.batch_size)  # one rank: the whole batch
        total_loss, tokens = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        first = self.first_step
        with first if first is not None else nullcontext():  # a booster's first step records its flows for V
            for j in range(self.args.grad_accum):
                batch = self.setup.stream.batch(self.step * self.args.grad_accum + j, part).to(self.setup.device)
                loss, count = causal_lm_loss(self.setup.model, batch)
                # each rank's share of the global mean (1 for one process): summed over ranks, gradient and loss equal one process's
                share = count / max(float(ranks.sum_(torch.tensor(float(count), dtype=torch.float64))), 1.0)
                (loss * share / self.args.grad_accum).backward()
                total_loss += float(loss.detach()) * share / self.args.grad_accum
                tokens += batch.num_tokens
                if first is not None and j + 1 == first.batches:
                    first.apply()
        return total_loss, tokens

    def fit(self) -> None:
        total, kappa = self.args.max_steps, self.plan.steps_per_booster
        with TrainProgress(total, self.step) if self.show_progress else NoProgress() as bar:
            while self.step < total:
                if self.booster is None:
                    self._start_booster()
                started = time.perf_counter()
                loss, tokens = self._train_step()
                lr = self.optimizer.param_groups[0]["lr"]  # type: ignore[union-attr]
                index = self.booster.index
                self.step += 1
                speed = tokens / max(time.perf_counter() - started, 1e-9)
                if not math.isfinite(loss) or not self.booster.is_finite():
                    self._discard(loss, bar)
                elif self.step % self.args.log_every == 0 or self.step == total:
                    self._log({"step": self.step, "loss": round(loss, 6), "lr": lr, "booster": index,
                                  "blocks": self.booster.blocks, "tokens": tokens, "tokens_per_s": round(speed, 1)})
                bar.update(self.step, loss, lr, index, self.plan.num_boosters, speed)
                booster_done = self.step % kappa == 0 or self.step == total
                if booster_done and self.booster is not None:
                    self._merge(self.booster)
                if self.step == total and self.plan.average_last > 1:
                    self._average_tail()
                if booster_done:
                    self.attempt = 0
                if booster_done or self.step % self.args.checkpoint_every == 0:
                    self._checkpoint()
                if self.args.snapshot_every and self.step % self.args.snapshot_every == 0 and self.ranks.main:
                    self._snapshot()
                if self.after_step is not None:
                    self.after_step(self.step)
        if self.ranks.main:
            self.run.write_info({**self.run.info(), "status": "complete", "steps": self.step})
