"""The one way to open what a command is pointed at as a model: a run directory (base + record, at its end or at
step N), a merged folder, or a base model (alias, ``.gguf``, folder, hub id).

``xgblora eval``, ``merge``, ``export``, ``chat`` and ``generate`` all call :func:`open_target`, so a run is opened
the same way everywhere: its base folder and recorded code trust, its dtype (unless asked for another), its
quantization (unless asked for none), its boosters replayed exactly onto the base in memory
(:func:`xgblora_cli.core.merge.apply_record`: merged once at load, so they cost nothing per token after), and the
prompt format it was trained with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from xgblora_cli.common.errors import UserError
from xgblora_cli.common.runtime import pick_device
from xgblora_cli.core.merge import FactorStack, apply_record
from xgblora_cli.core.record import boosters_at
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.models.base_weights import BaseWeights
from xgblora_cli.models.loading import load_model, load_tokenizer
from xgblora_cli.models.sources import resolve_model_dir

BASE_MAX_LEN = 2048  # tokens per sequence for a base model or merged folder that records no length of its own
MERGE_SUMMARY = "xgblora_merge.json"  # what `xgblora merge` writes beside a merged folder's weights


@dataclass
class Opened:
    """A target opened as a model: the model, its tokenizer, the prompt format to talk to it in, and what it is."""

    model: nn.Module
    tokenizer: object  # transformers.PreTrainedTokenizerBase
    prompt: PromptFormat
    kind: str  # "run", "merged" or "model"
    path: Path  # the run directory, or the model folder
    base_dir: Path  # the base model's folder: a run's base, a merged folder's base as its merge recorded, else its own
    boosters: int = 0  # boosters replayed onto the base (a run)
    step: int | None = None  # a run as it was after this step (None: its end)
    stack: FactorStack = field(default_factory=FactorStack)  # the replayed factors, by weight

    def describe(self) -> dict:
        """What was opened, for results files and headers."""
        out = {"kind": self.kind, "path": str(self.path)}
        if self.kind == "run":
            out.update({"boosters": self.boosters, "step": self.step})
        return out


def merged_format(model_dir: Path) -> PromptFormat | None:
    """The prompt format a merged folder's run was trained with (from its ``xgblora_merge.json``), if it says."""
    summary = Path(model_dir) / MERGE_SUMMARY
    if not summary.is_file():
        return None
    stored = json.loads(summary.read_text()).get("prompt_format")
    return PromptFormat.from_dict(stored) if stored else None


def merged_base(model_dir: Path) -> Path | None:
    """The base model folder a merged folder was made from (its ``xgblora_merge.json``), if it still exists."""
    summary = Path(model_dir) / MERGE_SUMMARY
    if not summary.is_file():
        return None
    base = json.loads(summary.read_text()).get("base")
    return Path(base) if base and Path(base).is_dir() else None


def open_target(
    target: str | Path,
    *,
    step: int | None = None,
    dtype: str | None = None,
    device: str | torch.device = "auto",
    quantization: str | None = None,
    template: str | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
) -> Opened:
    """Open ``target`` as a model (see the module docstring).

    Args:
        step: a run as it was after this step (a snapshot, or a step where a booster ended); runs only.
        dtype: the weights' dtype; None: a run's own (its recipe's), float32 for anything else.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or a torch device.
        quantization: None: a run's own (its recipe's), none for anything else; ``none`` opens a quantized run's
            base unquantized (what merge and export write).
        template: a prompt template overriding the target's own (``auto``, ``chat``, ``plain``).
        trust_remote_code, allow_pickle: for a model that is not a run (a run uses what its recipe recorded).
    """
    device = device if isinstance(device, torch.device) else pick_device(device)
    run = RunDir(target)
    if run.is_run():
        opened = _open_run(run, step, dtype, device, quantization)
    else:
        if step is not None:
            raise UserError(f"--step: {target} is not a run directory; only a run has steps to go back to")
        model_dir = resolve_model_dir(str(target), allow_pickle, trust_remote_code)
        model = load_model(model_dir, dtype or "float32", device, trust_remote_code, quantization or "none")
        tokenizer = load_tokenizer(model_dir, trust_remote_code)
        stored = merged_format(model_dir)
        prompt = stored or PromptFormat.resolve(tokenizer, "auto", BASE_MAX_LEN)
        opened = Opened(model, tokenizer, prompt, "merged" if stored else "model", model_dir, merged_base(model_dir) or model_dir)
    if template is not None:
        opened.prompt = PromptFormat.resolve(opened.tokenizer, template, opened.prompt.max_len)
    return opened


def _open_run(run: RunDir, step: int | None, dtype: str | None, device: torch.device, quantization: str | None) -> Opened:
    """A run directory: its base with the record (up to ``step``) replayed exactly, in its trained prompt format."""
    base_dir = run.base_dir()
    recipe = run.recipe()  # opened as trained: the same code trust, dtype and quantization
    remote = recipe.trust_remote_code
    model = load_model(base_dir, dtype or run.info().get("dtype", recipe.dtype), device, remote,
                       quantization or recipe.quantization)
    boosters = boosters_at(run.path, step)
    stack = apply_record(model, BaseWeights(base_dir), boosters)
    tokenizer = load_tokenizer(base_dir, remote)
    return Opened(model, tokenizer, run.prompt_format(tokenizer), "run", run.path, base_dir, len(boosters), step, stack)
