"""Starting, resuming and launching a training run: everything around the loop of :mod:`xgblora_cli.core.train`.

``start_run`` joins the data-parallel group (if any), refuses a run whose memory plan cannot fit, loads and checks
the model and data (:func:`prepare`), checks that ``--resume`` is given the recipe the run started with, that
the disk has room, and only then creates or continues the run directory (rank 0 alone writes) and trains.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import yaml

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.fsutil import check_writable
from xgblora_cli.common.runtime import (
    SINGLE,
    Ranks,
    check_batch,
    exit_worker,
    fault_injection,
    init_from_env,
    pick_device,
    shutdown,
)
from xgblora_cli.core.boosting import find_targets, plan_for, trainable_per_booster
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.core.train import Setup, Trainer
from xgblora_cli.data.batches import BatchStream
from xgblora_cli.data.formats import load_records
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.models.loading import load_model, load_tokenizer
from xgblora_cli.models.sharding import load_sharded
from xgblora_cli.models.sources import resolve_model_dir
from xgblora_cli.plan import device_memory, plan_recipe, record_bytes, summary_line
from xgblora_cli.recipe import Recipe
from xgblora_cli.recipe_file import recipe_to_yaml
from xgblora_cli.tracking import Trackers, check_available


def prepare(recipe: Recipe, source: str, ranks: Ranks = SINGLE) -> Setup:
    """Load the model and the data, check the recipe against them. Raises UserError on bad input."""
    check_batch(ranks, recipe.train.batch_size, source)
    device = pick_device(recipe.device, ranks.local_rank)
    model_dir = resolve_model_dir(recipe.model, recipe.allow_pickle, recipe.trust_remote_code)
    if recipe.train.sharding == "fsdp":
        if not ranks.active:
            raise UserError(f"{source}: train.sharding: fsdp shards the base over data-parallel ranks; launch with "
                            "torchrun --nproc_per_node N (N >= 2), or use sharding: none in one process")
        model = load_sharded(model_dir, recipe.dtype, device, ranks, recipe.trust_remote_code, recipe.quantization)
    else:
        model = load_model(model_dir, recipe.dtype, device, recipe.trust_remote_code, recipe.quantization)
    plan = plan_for(recipe, model, source)
    trainable = trainable_per_booster(find_targets(model, recipe.target_modules), plan)
    tokenizer = load_tokenizer(model_dir, recipe.trust_remote_code)
    records = load_records(recipe.dataset, recipe.dataset_split, recipe.dataset_format, recipe.dataset_columns)
    try:
        prompt = PromptFormat.resolve(tokenizer, recipe.prompt_template, recipe.train.max_seq_len, recipe.train_on_inputs)
        stream = BatchStream(tokenizer, records, recipe.train.batch_size, prompt, recipe.seed, packing=recipe.train.packing)
        dropped = stream.drop_unlabelled()  # every record rendered now: template problems surface before anything is written
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    if dropped == len(records):
        raise UserError(f"{source}: dataset: no example keeps a labelled token at train.max_seq_len {recipe.train.max_seq_len}")
    if dropped and ranks.main:
        print(f"note: {dropped} of {len(records)} examples have no labelled token at train.max_seq_len "
              f"{recipe.train.max_seq_len} (an empty answer) and are left out", file=sys.stderr, flush=True)
    return Setup(recipe, plan, model_dir, model, stream, trainable, device, prompt, ranks)


def _first_difference(stored: dict, given: dict, defaults: dict, prefix: str = "") -> str | None:
    """The first key whose value differs, as ``key (run: a, now: b)``; a key the stored recipe lacks (one added to
    xgblora after the run started) counts as its default."""
    for key in sorted(set(stored) | set(given)):
        a, b = stored.get(key, defaults.get(key)), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, defaults.get(key) or {}, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key} (run: {a!r}, now: {b!r})"
    return None


def _check_resumable(run: RunDir, recipe: Recipe) -> None:
    if not run.is_run():
        raise UserError(f"--resume: {run.path} holds no run to resume (no recipe.yaml / run.json)")
    stored = yaml.safe_load(run.recipe_file.read_text())
    given = recipe.to_dict()
    stored.pop("eval", None), given.pop("eval", None)  # evaluation settings do not change training
    defaults = dataclasses.asdict(Recipe(model="-", dataset="-", output_dir="-"))
    diff = _first_difference(stored, given, defaults)
    if diff:
        raise UserError(f"--resume: the recipe differs from the one {run.path} was started with: {diff}")


def check_fits(recipe: Recipe, source: str, ranks: Ranks) -> None:
    """Refuse, with the numbers, a run whose memory plan exceeds its device (``--no-memory-check`` skips this)."""
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
    check_available(recipe.report_to)
    ranks.barrier()  # every rank has passed its checks before rank 0 replaces or creates anything
    if ranks.main:
        # the record plus two checkpoints with AdamW moments, and slack
        need = record_bytes(setup.plan, setup.trainable) + 2 * setup.trainable * 12 + 16 * 2**20
        check_writable(run.path, need, "output_dir")
        if not resume:
            info = {"model": recipe.model, "model_dir": str(setup.model_dir.resolve()), "dtype": recipe.dtype,
                    "plan": setup.plan.__dict__, "trainable_per_booster": setup.trainable, "ranks": ranks.world,
                    "prompt_format": setup.prompt.to_dict()}
            run.create(recipe_to_yaml(recipe), info, overwrite)
    ranks.barrier()
    trackers = Trackers(recipe.report_to if ranks.main else [], run.path, recipe.to_dict())
    try:
        trainer = Trainer(setup, run, show_progress=progress, after_step=fault_injection(), trackers=trackers)
        ckpt = run.load_checkpoint() if resume else None
        if ckpt is not None:
            trainer.restore(ckpt)
        elif resume and ranks.main:
            trainer.record.truncate(0)
            run.truncate_metrics(0)
        ranks.barrier()
        trainer.fit()
    finally:
        trackers.close()
    return run.path


