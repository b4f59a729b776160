"""The training loop: boosters of kappa optimizer steps, one global LR schedule, metrics, checkpoints, resume.

The loop is the same for every method; the plan (rank, k, kappa) decides whether it is XGBLoRA, COLA or LoRA.
Order of durable writes at the end of a booster: its factors into the record, then the checkpoint that says
the booster is merged. A crash between the two is repaired on resume by truncating the record to the
checkpoint's count, so a booster is never merged twice.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from xgblora_cli.boosting import ActiveBooster, BoostingEngine, find_targets, trainable_per_booster
from xgblora_cli.data import BatchStream, load_records
from xgblora_cli.distributed import SINGLE, Ranks, check_batch, exit_worker, init_from_env, shutdown
from xgblora_cli.errors import UserError
from xgblora_cli.fsutil import check_writable
from xgblora_cli.loss import causal_lm_loss
from xgblora_cli.models import BaseWeights, find_blocks, load_model, load_tokenizer, pick_device, resolve_model_dir
from xgblora_cli.progress import TrainProgress
from xgblora_cli.prompts import PromptFormat
from xgblora_cli.recipe import BoosterPlan, Recipe, RecipeError, TrainArgs, recipe_to_yaml, resolve_plan
from xgblora_cli.record import MergedWeights, Record, apply_record
from xgblora_cli.rundir import Checkpoint, RunDir

KILL_ENV = "XGBLORA_TEST_SIGKILL_AT_STEP"  # fault injection for the resume test: SIGKILL self after this step


def lr_at(step: int, booster_start: int, args: TrainArgs) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, cosine decay over all steps to
    ``min_lr_ratio``, times an optional linear re-warmup over the first ``rewarmup_steps`` of each booster."""
    if step < args.warmup_steps:
        factor = (step + 1) / args.warmup_steps
    else:
        span = max(1, args.max_steps - args.warmup_steps)
        progress = min(1.0, (step - args.warmup_steps) / span)
        factor = args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if args.rewarmup_steps:
        factor *= min(1.0, (step - booster_start + 1) / args.rewarmup_steps)
    return args.learning_rate * factor


def make_optimizer(booster: ActiveBooster, args: TrainArgs) -> torch.optim.Optimizer:
    """A fresh AdamW over this booster's adapters only: moments of merged boosters are gone."""
    return torch.optim.AdamW(booster.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)


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


def plan_for(recipe: Recipe, model: nn.Module, source: str) -> BoosterPlan:
    try:
        return resolve_plan(recipe, len(find_blocks(model)))
    except RecipeError as err:
        raise UserError(f"{source}: {err.key}: {err.message}") from None


def prepare(recipe: Recipe, source: str, ranks: Ranks = SINGLE) -> Setup:
    """Load the model and the data, check the recipe against them. Raises UserError on bad input."""
    check_batch(ranks, recipe.train.batch_size, source)
    device = pick_device(recipe.device, ranks.local_rank)
    model_dir = resolve_model_dir(recipe.model, recipe.allow_pickle, recipe.trust_remote_code)
    model = load_model(model_dir, recipe.dtype, device, recipe.trust_remote_code, recipe.quantization)
    plan = plan_for(recipe, model, source)
    trainable = trainable_per_booster(find_targets(model, recipe.target_modules), plan)
    tokenizer = load_tokenizer(model_dir, recipe.trust_remote_code)
    records = load_records(recipe.dataset, recipe.dataset_split)
    try:
        prompt = PromptFormat.resolve(tokenizer, recipe.prompt_template, recipe.train.max_seq_len)
        stream = BatchStream(tokenizer, records, recipe.train.batch_size, prompt, recipe.seed)
        stream.batch(0)  # render one batch now: template problems surface before anything is written
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    return Setup(recipe, plan, model_dir, model, stream, trainable, device, prompt, ranks)


class Trainer:
    """Runs the boosting loop of ``setup`` into ``run``, from scratch or from its checkpoint."""

    def __init__(self, setup: Setup, run: RunDir, show_progress: bool = True) -> None:
        self.setup = setup
        self.args = setup.recipe.train
        self.plan = setup.plan
        self.run = run
        self.record = Record(run.path)
        self.ranks = setup.ranks
        self.show_progress = show_progress and self.ranks.main
        torch.manual_seed(setup.recipe.seed)
        self.merged = MergedWeights(BaseWeights(setup.model_dir))
        self.engine = BoostingEngine(
            setup.model, setup.plan, setup.recipe.target_modules, setup.recipe.seed, self.merged,
            gradient_checkpointing=self.args.gradient_checkpointing,
        )
        self.step = 0
        self.attempt = 0  # retries of the current booster window after divergence
        self.failures = 0  # consecutive discarded boosters
        self.booster: ActiveBooster | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint: replay the record, rebuild the booster in flight and its optimizer."""
        if self.ranks.main:
            self.record.truncate(ckpt.merged)
        boosters = self.record.load()[: ckpt.merged]
        self.merged = apply_record(self.setup.model, self.merged.base, boosters)
        self.engine.merged = self.merged
        self.step = ckpt.step
        self.attempt, self.failures = ckpt.attempt, ckpt.failures
        if ckpt.booster is not None:
            self.booster = self.engine.start(ckpt.booster, ckpt.attempt)
            self.booster.load_tensors(ckpt.adapters)
            self.optimizer = make_optimizer(self.booster, self.args)
            self.optimizer.load_state_dict(ckpt.optimizer)
        torch.set_rng_state(ckpt.rng)
        if self.ranks.main:
            self.run.truncate_metrics(ckpt.step)

    def _log(self, row: dict) -> None:
        if self.ranks.main:
            self.run.log(row)

    def _checkpoint(self) -> None:
        if not self.ranks.main:
            return
        booster = self.booster
        self.run.save_checkpoint(Checkpoint(
            step=self.step,
            merged=len(self.record),
            booster=None if booster is None else booster.index,
            adapters={} if booster is None else booster.tensors(),
            optimizer={"state": {}} if self.optimizer is None else self.optimizer.state_dict(),
            rng=torch.get_rng_state(),
            attempt=self.attempt,
            failures=self.failures,
        ))

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
                f"lower train.learning_rate (now {self.args.learning_rate:g}) and --resume, or start again"
            )

    def _train_step(self) -> tuple[float, int]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (mean loss, tokens seen)."""
        assert self.booster is not None and self.optimizer is not None
        lr = lr_at(self.step, self.booster.index * self.plan.steps_per_booster, self.args)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.setup.model.train()
        ranks, part = self.ranks, self.ranks.slice(self.args.batch_size)  # one rank: the whole batch
        total_loss, tokens = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for j in range(self.args.grad_accum):
            batch = self.setup.stream.batch(self.step * self.args.grad_accum + j, part).to(self.setup.device)
            loss, count = causal_lm_loss(self.setup.model, batch)
            # each rank's share of the global mean (1 for one process): summed over ranks, gradient and loss equal one process's
            share = count / max(float(ranks.sum_(torch.tensor(float(count), dtype=torch.float64))), 1.0)
            (loss * share / self.args.grad_accum).backward()
            total_loss += float(loss.detach()) * share / self.args.grad_accum
            tokens += batch.num_tokens
        ranks.sum_grads_(self.booster.parameters())
        total_loss, tokens = float(ranks.sum_(total_loss)), int(ranks.sum_(tokens))
        if self.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.booster.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, tokens

    def fit(self) -> None:
        total, kappa = self.args.max_steps, self.plan.steps_per_booster
        kill_at = int(os.environ.get(KILL_ENV, "-1"))
        with TrainProgress(total, self.step) if self.show_progress else _NoProgress() as bar:
            while self.step < total:
                if self.booster is None:
                    self.booster = self.engine.start(self.step // kappa, self.attempt)
                    self.optimizer = make_optimizer(self.booster, self.args)
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
                    merged = self.engine.merge(self.booster)
                    self.ranks.check_same(merged.digest(), f"booster {merged.index + 1}")
                    if self.ranks.main:
                        self.record.append(merged)
                    self.booster, self.optimizer = None, None
                    self.failures = 0
                if booster_done:
                    self.attempt = 0
                if booster_done or self.step % self.args.checkpoint_every == 0:
                    self._checkpoint()
                if self.args.snapshot_every and self.step % self.args.snapshot_every == 0 and self.ranks.main:
                    self._snapshot()
                if self.step == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
        if self.ranks.main:
            self.run.write_info({**self.run.info(), "status": "complete", "steps": self.step})


def _first_difference(stored: dict, given: dict, prefix: str = "") -> str | None:
    for key in sorted(set(stored) | set(given)):
        a, b = stored.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key} (run: {a!r}, now: {b!r})"
    return None


def _check_resumable(run: RunDir, recipe: Recipe) -> None:
    import yaml

    if not run.is_run():
        raise UserError(f"--resume: {run.path} holds no run to resume (no recipe.yaml / run.json)")
    stored = yaml.safe_load(run.recipe_file.read_text())
    given = recipe.to_dict()
    stored.pop("eval", None), given.pop("eval", None)  # evaluation settings do not change training
    diff = _first_difference(stored, given)
    if diff:
        raise UserError(f"--resume: the recipe differs from the one {run.path} was started with: {diff}")


def check_fits(recipe: Recipe, source: str, ranks: Ranks) -> None:
    """Refuse, with the numbers, a run whose memory plan exceeds its device (``--no-memory-check`` skips this)."""
    from xgblora_cli.plan import device_memory, plan_recipe, summary_line

    device = str(pick_device(recipe.device, ranks.local_rank))
    result, budget = plan_recipe(recipe, source, device, ranks.world), device_memory(device)
    if budget and result["peak_bytes"] > budget:
        raise UserError(
            f"{source}: the memory plan does not fit {device}: {summary_line(result, budget)}; lower train.batch_size or "
            "train.max_seq_len, set train.gradient_checkpointing: true or quantization: 4bit (see xgblora plan), "
            "or pass --no-memory-check"
        )


def start_run(
    recipe: Recipe, source: str, resume: bool = False, overwrite: bool = False, progress: bool = True, memory_check: bool = True,
) -> Path:
    """Train ``recipe`` into its output_dir (new, replaced with ``overwrite``, or continued with ``resume``).

    Under ``torchrun`` every rank runs this; the checks are read-only and run everywhere (so every rank
    fails alike), while creating and writing the run directory is rank 0's alone.
    """
    ranks = init_from_env(recipe.device)
    try:
        if memory_check:
            check_fits(recipe, source, ranks)
        path = _train(recipe, source, resume, overwrite, progress, ranks)
    finally:
        shutdown(ranks)
    exit_worker(ranks)
    return path


def _train(recipe: Recipe, source: str, resume: bool, overwrite: bool, progress: bool, ranks: Ranks) -> Path:
    run = RunDir(recipe.output_dir)
    if resume:
        _check_resumable(run, recipe)
        if run.info().get("status") == "complete":
            print(f"{run.path}: the run is already complete", flush=True)
            return run.path
    else:
        run.check_new(overwrite)
    setup = prepare(recipe, source, ranks)
    ranks.barrier()  # every rank has passed its checks before rank 0 replaces or creates anything
    if ranks.main:
        # the record (4 bytes per factor entry per booster) plus two checkpoints with AdamW moments, and slack
        need = setup.plan.num_boosters * setup.trainable * 4 + 2 * setup.trainable * 12 + 16 * 2**20
        check_writable(run.path, need, "output_dir")
        if not resume:
            info = {"model": recipe.model, "model_dir": str(setup.model_dir.resolve()), "dtype": recipe.dtype,
                    "plan": setup.plan.__dict__, "trainable_per_booster": setup.trainable, "ranks": ranks.world,
                    "prompt_format": setup.prompt.to_dict()}
            run.create(recipe_to_yaml(recipe), info, overwrite)
    ranks.barrier()
    trainer = Trainer(setup, run, show_progress=progress)
    ckpt = run.load_checkpoint() if resume else None
    if ckpt is not None:
        trainer.restore(ckpt)
    elif resume and ranks.main:
        trainer.record.truncate(0)
        run.truncate_metrics(0)
    ranks.barrier()
    trainer.fit()
    return run.path


class _NoProgress:
    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *args: object) -> None:
        return None

    def note(self, message: str) -> None:
        print(message, flush=True)
