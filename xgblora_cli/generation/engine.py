"""Generating text from an opened model: one prompt streamed token by token, or a batch with left padding.

Both go through transformers' ``generate`` (greedy by default; sampling with a temperature and top-p, seeded).
Streaming uses a ``TextStreamer`` that hands each finished piece of text to a callback and notes when the first
new token arrived; a :class:`StopFlag` set from a signal handler ends a generation at the next token (Ctrl-C
in ``xgblora chat`` stops the answer, not the session).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from xgblora_cli.common.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """How answers are drawn."""

    max_new_tokens: int = 256
    """Tokens generated at most per answer."""
    temperature: float = 0.0
    """0: greedy (the same answer every time); above 0: sampled at this temperature."""
    top_p: float = 1.0
    """Sampling only: keep the smallest set of tokens whose probability reaches this (1: all)."""
    seed: int = 0
    """Sampling only: the random seed, set once per session or file."""
    min_new_tokens: int = 0
    """Tokens generated at least (an end token earlier is ignored): for timing a fixed length, not for users."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens: must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UserError(f"--temperature: must be >= 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p: must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict:
        fixed = {"min_new_tokens": self.min_new_tokens} if self.min_new_tokens else {}
        if self.temperature == 0:
            return {"do_sample": False, **fixed}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, **fixed}


@dataclass
class Answer:
    """One generated answer: its text, its new tokens, seconds in all and to the first token, whether it was stopped."""

    text: str
    tokens: int
    seconds: float
    first_token_s: float | None = None
    stopped: bool = False

    @property
    def tokens_per_s(self) -> float:
        """New tokens per second after the first (the decode rate)."""
        if self.first_token_s is None or self.tokens < 2:
            return 0.0
        return (self.tokens - 1) / max(self.seconds - self.first_token_s, 1e-9)


class StopFlag:
    """Set (from a signal handler) to end the generation in flight at its next token."""

    def __init__(self) -> None:
        self.set = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        """transformers' stopping-criteria interface: True for every row once set."""
        return torch.full((input_ids.shape[0],), self.set, dtype=torch.bool, device=input_ids.device)


def _streamer(tokenizer, on_text: Callable[[str], None], started: float):  # -> transformers.TextStreamer
    from transformers import TextStreamer

    class Streamer(TextStreamer):
        first: float | None = None

        def put(self, value: torch.Tensor) -> None:
            if self.next_tokens_are_prompt is False and self.first is None:
                self.first = time.perf_counter() - started
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                on_text(text)

    return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _device(model: nn.Module) -> torch.device:
    return model.get_output_embeddings().weight.device


def _end_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: the EOS (a chat template's end-of-turn)."""
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _new_tokens(row: torch.Tensor, ends: list[int]) -> list[int]:
    """The generated ids of one row, up to (not including) the first end token."""
    ids = row.tolist()
    for position, token in enumerate(ids):
        if token in ends:
            return ids[:position]
    return ids


@torch.no_grad()
def stream(model: nn.Module, tokenizer, ids: list[int], sampling: Sampling, on_text: Callable[[str], None],
           stop: StopFlag | None = None) -> Answer:
    """Generate an answer after ``ids``, handing text to ``on_text`` as it is decoded."""
    from transformers import StoppingCriteriaList

    device = _device(model)
    started = time.perf_counter()
    streamer = _streamer(tokenizer, on_text, started)
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=sampling.max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=_end_ids(tokenizer), streamer=streamer,
                         stopping_criteria=StoppingCriteriaList([stop] if stop is not None else []),
                         **sampling.generate_kwargs())
    new = _new_tokens(out[0, len(ids):], _end_ids(tokenizer))
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Answer(text, len(new), time.perf_counter() - started, streamer.first, bool(stop is not None and stop.set))


@torch.no_grad()
def batch(model: nn.Module, tokenizer, prompts: list[list[int]], sampling: Sampling) -> list[Answer]:
    """Answers to several prompts in one ``generate`` call, left-padded so every prompt ends where its answer
    starts; each answer's seconds are the batch's, shared."""
    device = _device(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    started = time.perf_counter()
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=sampling.max_new_tokens,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=_end_ids(tokenizer), **sampling.generate_kwargs())
    seconds = time.perf_counter() - started
    answers = []
    for row in out[:, width:]:
        new = _new_tokens(row, _end_ids(tokenizer))
        answers.append(Answer(tokenizer.decode(new, skip_special_tokens=True), len(new), seconds))
    return answers


def prepare_for_generation(model: nn.Module) -> nn.Module:
    """Evaluation mode with the KV cache on (training loads turn it off)."""
    model.eval()
    model.config.use_cache = True
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = True
    return model
