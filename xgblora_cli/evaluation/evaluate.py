"""``xgblora eval``: score a base model, a run directory (base + record, in memory) or a merged folder on tasks.

Tasks: ``mmlu`` (by category), the eight LLM-Adapters commonsense sets, GLUE ``sst2`` and ``rte``, ``choice``
(a user's own labelled file) and ``perplexity`` on a training-format dataset. A run directory or a merged
folder is scored in the prompt format it was trained with (template, BOS, length: read from the run); a base
model in its tokenizer's own (``auto``). Results are a JSON-ready dict with per-task (and per-category) scores,
counts, skips and the exact settings; evaluating a run directory also writes them into ``<run>/eval/``.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.fsutil import atomic_write_text
from xgblora_cli.core.loss import causal_lm_loss
from xgblora_cli.core.opening import open_target
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.data.batches import collate, encode_record
from xgblora_cli.data.formats import load_records
from xgblora_cli.data.prompts import TEMPLATES, PromptFormat
from xgblora_cli.evaluation.scoring import model_device, score_generate, score_loglik
from xgblora_cli.evaluation.tasks import (
    Loaded,
    Question,
    choice,
    commonsense,
    glue,
    mmlu,
)
from xgblora_cli.recipe import SCORINGS

TASKS = ["mmlu", *commonsense.FOLDERS, *glue.GLUE, "choice", "perplexity"]
SCORING_TEXT = {
    "label": "label: each answer in the training data's format (e.g. 'the correct answer is positive') after the prompt",
    "loglik": "loglik: each option's text after a plain 'Question: ... Answer:' context (lm-evaluation-harness)",
    "generate": "generate: greedy generation after the prompt, then the first answer label in the text (LLM-Adapters)",
}


@dataclass
class EvalSettings:
    """What ``xgblora eval`` does: the recipe's ``eval:`` block (for a run) with the command line's options over it."""

    tasks: list[str]
    data: str | None = None
    limit: int | None = None
    batch_size: int = 8
    shots: int = 0
    scoring: str = "label"
    seed: int = 0
    dtype: str | None = None
    device: str = "auto"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    template: str | None = None  # None: the target's own (a run's or merged folder's; auto for a base model)
    step: int | None = None  # a run at a kept snapshot (train.snapshot_every) instead of its end

    def __post_init__(self) -> None:
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise UserError(f"--task: unknown task {unknown[0]!r}; allowed: {', '.join(TASKS)}" if unknown else f"--task: name at least one of {', '.join(TASKS)}")
        if self.scoring not in SCORINGS:
            raise UserError(f"--scoring: must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit: must be >= 1, got {self.limit}")
        if self.batch_size < 1 or not 0 <= self.shots <= 5:
            raise UserError("--batch-size must be >= 1 and --shots in 0..5 (MMLU's dev split has 5 per subject)")
        if self.data is not None and not Path(self.data).exists():
            raise UserError(f"--data {self.data}: not found")
        if self.template is not None and self.template not in TEMPLATES:
            raise UserError(f"--template: must be one of {', '.join(TEMPLATES)}, got {self.template!r}")


def eval_settings(target: str, given: dict, **runtime) -> EvalSettings:
    """Settings for ``target``: without ``tasks`` in ``given``, a run's ``eval:`` block (tasks, data, limit,
    shots, scoring), each key overridden by the command line's value where ``given`` has one (None = not given,
    so ``--shots 0`` wins over the block); with ``tasks``, the command line alone. ``runtime``: the other flags."""
    block: dict = {}
    run = RunDir(target)
    if not given.get("tasks") and run.is_run():
        block = asdict(run.recipe().eval)
        block["data"] = block["data"] or None
    chosen = {**block, **{key: value for key, value in given.items() if value is not None}}
    return EvalSettings(tasks=list(chosen.pop("tasks", None) or []), **chosen, **runtime)


def subset(n: int, limit: int | None, seed: int) -> list[int]:
    """A fixed, seeded choice of ``limit`` of ``n`` items, in their original order."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _load(task: str, settings: EvalSettings) -> Loaded:
    data = Path(settings.data) if settings.data else None
    if task == "mmlu":
        return mmlu.load(data, settings.shots)
    if task in glue.GLUE:
        return glue.load(task, data)
    if task == "choice":
        return choice.load(data)
    return commonsense.load(task, data)


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)


def load_task(task: str, settings: EvalSettings) -> Loaded | list[dict]:
    """A task's data, read and checked before any model is loaded: questions, or perplexity's records."""
    if task == "perplexity":
        if not settings.data:
            raise UserError("task 'perplexity': give --data, a training-format .json/.jsonl file or a hub dataset")
        records = load_records(settings.data)
        return [records[i] for i in subset(len(records), settings.limit, settings.seed)]
    loaded = _load(task, settings)
    if not loaded.questions:
        raise UserError(f"task '{task}': no question could be scored ({loaded.skipped} skipped: {'; '.join(loaded.skip_reasons)})")
    loaded.questions = [loaded.questions[i] for i in subset(len(loaded.questions), settings.limit, settings.seed)]
    return loaded


def answer_shares(picks: list[int], questions: list[Question], most: int = 10) -> dict[str, dict[str, float]]:
    """How often each answer was picked and how often it is right, by the answers' short names (``positive``,
    ``B``, ``answer2``; ``(none)`` for an unparsed generation): ``{"predicted": {name: share}, "gold": {...}}``.
    A model that learned only the majority answer shows as one name near 1.0. Empty when the questions have more
    than ``most`` distinct names (free-text answers), where shares say nothing."""
    names = {name for q in questions for name in q.labels}
    if not questions or len(names) > most:
        return {}
    def shares(chosen: list[str]) -> dict[str, float]:
        return {name: count / len(chosen) for name, count in sorted(Counter(chosen).items())}
    predicted = [q.labels[pick] if pick >= 0 else "(none)" for pick, q in zip(picks, questions)]
    return {"predicted": shares(predicted), "gold": shares([q.labels[q.answer] for q in questions])}


def run_choice_task(model, tokenizer, task: str, loaded: Loaded, settings: EvalSettings, fmt: PromptFormat, console: Console) -> dict:
    questions = loaded.questions
    if loaded.skipped:
        console.print(f"{task}: {loaded.skipped} records skipped (not scored), first: {'; '.join(loaded.skip_reasons)}", highlight=False)
    picks: list[int] = []
    with _progress(console) as bar:
        job = bar.add_task(task, total=len(questions))
        for start in range(0, len(questions), settings.batch_size):
            chunk = questions[start : start + settings.batch_size]
            if settings.scoring == "generate":
                picks += score_generate(model, tokenizer, chunk, fmt)
            else:
                picks += score_loglik(model, tokenizer, chunk, fmt, labels=settings.scoring == "label")
            bar.advance(job, len(chunk))
    correct = [pick == q.answer for pick, q in zip(picks, questions)]
    result = {"accuracy": sum(correct) / len(correct), "n": len(correct), "correct": sum(correct),
              "skipped": loaded.skipped, "skip_reasons": loaded.skip_reasons,
              "unparsed": sum(pick < 0 for pick in picks), "chance": sum(1 / len(q.candidates) for q in questions) / len(questions)}
    result.update(answer_shares(picks, questions))
    if task == "mmlu":
        by_category: dict[str, list[bool]] = {}
        for ok, q in zip(correct, questions):
            by_category.setdefault(mmlu.category(q.group), []).append(ok)
        result["categories"] = {name: sum(v) / len(v) for name, v in sorted(by_category.items())}
    return result


def run_perplexity(model, tokenizer, chosen: list[dict], settings: EvalSettings, fmt: PromptFormat, console: Console) -> dict:
    total_nll, total_tokens = 0.0, 0
    model.eval()
    with torch.no_grad(), _progress(console) as bar:
        job = bar.add_task("perplexity", total=len(chosen))
        for start in range(0, len(chosen), settings.batch_size):
            items = [encode_record(tokenizer, fmt, r) for r in chosen[start : start + settings.batch_size]]
            batch = collate(items, tokenizer.pad_token_id).to(model_device(model))
            loss, count = causal_lm_loss(model, batch)
            total_nll += float(loss) * count
            total_tokens += count
            bar.advance(job, len(items))
    mean = total_nll / max(total_tokens, 1)
    return {"perplexity": math.exp(mean), "mean_nll": mean, "tokens": total_tokens, "n": len(chosen)}


def evaluate(target: str, settings: EvalSettings, console: Console | None = None) -> dict:
    """Score ``target`` on every task of ``settings``; returns the results dict (also written into a run)."""
    console = console or Console(stderr=True)
    data = {task: load_task(task, settings) for task in settings.tasks}  # bad data fails before a model is loaded
    opened = open_target(target, step=settings.step, dtype=settings.dtype, device=settings.device,
                         template=settings.template, trust_remote_code=settings.trust_remote_code,
                         allow_pickle=settings.allow_pickle)
    model, tokenizer, described, fmt = opened.model, opened.tokenizer, opened.describe(), opened.prompt
    model.eval()
    source = "the run's own" if described["kind"] == "run" else "as given" if settings.template else "the target's"
    console.print(f"prompt format ({source}): {fmt.describe()}", highlight=False)
    if any(task != "perplexity" for task in settings.tasks):
        console.print(f"scoring {SCORING_TEXT[settings.scoring]}", highlight=False)
    tasks = {}
    for task in settings.tasks:
        if task == "perplexity":
            tasks[task] = run_perplexity(model, tokenizer, data[task], settings, fmt, console)
        else:
            tasks[task] = run_choice_task(model, tokenizer, task, data[task], settings, fmt, console)
    results = {"target": described, "settings": asdict(settings), "prompt_format": fmt.to_dict(), "tasks": tasks}
    if described["kind"] == "run":
        name = "results.json" if settings.step is None else f"results_step{settings.step}.json"
        atomic_write_text(Path(target) / "eval" / name, json.dumps(results, indent=2) + "\n")
    return results


def results_table(results: dict) -> Table:
    table = Table(title=f"eval of {Path(results['target']['path']).name}")
    for column in ("task", "score", "n", "skipped", "chance"):
        table.add_column(column)
    for task, r in results["tasks"].items():
        if task == "perplexity":
            table.add_row(task, f"ppl {r['perplexity']:.3f}", str(r["n"]), "0", "")
            continue
        table.add_row(task, f"{100 * r['accuracy']:.2f}", str(r["n"]), str(r["skipped"]), f"{100 * r['chance']:.1f}")
        if r.get("predicted"):
            table.add_row("  answers given", shares_text(r["predicted"]), "", "", "")
            table.add_row("  answers right", shares_text(r["gold"]), "", "", "")
        for name, acc in r.get("categories", {}).items():
            table.add_row(f"  {name}", f"{100 * acc:.2f}", "", "", "")
    return table


def shares_text(shares: dict[str, float]) -> str:
    """``{"negative": 0.25, "positive": 0.75}`` as ``negative 25%, positive 75%``."""
    return ", ".join(f"{name} {100 * share:.0f}%" for name, share in shares.items())
