"""Scoring a causal LM on questions: log-likelihood of each candidate answer, or greedy generation + extraction."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from xgblora_cli.data.batches import pad_right
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.evaluation.tasks import Question


def model_device(model: nn.Module) -> torch.device:
    """Where the model computes (its output head's device): inputs are moved there."""
    return model.get_output_embeddings().weight.device


@torch.no_grad()
def continuation_logprobs(model: nn.Module, pairs: list[tuple[list[int], list[int]]], pad_id: int) -> list[float]:
    """Summed log-probability of each continuation given its context; pairs of (context ids, continuation ids)."""
    ids, mask = pad_right([ctx + cont for ctx, cont in pairs], pad_id)
    width = ids.shape[1]
    target = torch.zeros_like(ids, dtype=torch.bool)
    for row, (ctx, cont) in enumerate(pairs):
        target[row, len(ctx) : len(ctx) + len(cont)] = True
    device = model_device(model)
    ids, mask, target = ids.to(device), mask.to(device), target.to(device)
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    predicts = target[:, 1:]  # position i predicts token i + 1
    logits = model.get_output_embeddings()(hidden[:, :-1][predicts]).float()
    token_lp = F.log_softmax(logits, dim=-1).gather(1, ids[:, 1:][predicts].unsqueeze(1)).squeeze(1)
    rows = torch.arange(len(pairs), device=device).unsqueeze(1).expand(-1, width - 1)[predicts]
    return torch.zeros(len(pairs), device=device).index_add_(0, rows, token_lp).tolist()


@torch.no_grad()
def last_position_logprobs(model: nn.Module, contexts: list[list[int]], pad_id: int) -> torch.Tensor:
    """Log-probabilities of the token after each context, shape (len(contexts), vocab)."""
    ids, mask = pad_right(contexts, pad_id)
    device = model_device(model)
    hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
    last = hidden[torch.arange(len(contexts), device=device), mask.to(device).sum(1) - 1]  # (n, d)
    return F.log_softmax(model.get_output_embeddings()(last).float(), dim=-1).cpu()


def fold_common_prefix(context: list[int], continuations: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Move the tokens every continuation starts with into the context, leaving at least one in each.

    Those tokens add the same log-probability to every candidate, so the ranking is unchanged; candidates that
    then differ in their one remaining token (``the correct answer is answer1`` / ``answer2``) are scored in one
    pass per question instead of one per candidate.
    """
    shortest = min(len(c) for c in continuations)
    shared = 0
    while shared < shortest - 1 and all(c[shared] == continuations[0][shared] for c in continuations):
        shared += 1
    return context + continuations[0][:shared], [c[shared:] for c in continuations]


def context_ids(tokenizer, question: Question, fmt: PromptFormat, labels: bool, reserve: int) -> list[int]:
    """The ids before the answer, cut from the left to leave ``reserve`` tokens of ``fmt.max_len`` for it.

    ``labels``: the question in the run's prompt format (worked examples as earlier turns), as it was trained;
    else the plain ``Question: ... Answer:`` context of lm-evaluation-harness. Either gets the BOS once.
    """
    text = fmt.prompt_text(tokenizer, question.prompt, question.shots) if labels else question.context
    return fmt.truncate_left(fmt.ids(tokenizer, text), max(fmt.max_len - reserve, 1))


def score_loglik(model: nn.Module, tokenizer, questions: list[Question], fmt: PromptFormat, labels: bool = True) -> list[int]:
    """The index of the most likely answer for each question (all answers scored in one batch), by summed
    log-probability; a prefix all of a question's answers share is scored once, as context. ``labels=True``
    (``--scoring label``): each candidate in the training data's answer format after the prompt in ``fmt``.
    ``labels=False`` (``--scoring loglik``): each option's text after the plain context, lm-evaluation-harness style.
    """
    pairs, owners = [], []
    for q_index, question in enumerate(questions):
        answers = question.candidates if labels else question.options
        answers = [tokenizer(answer, add_special_tokens=False)["input_ids"] for answer in answers]
        ctx = context_ids(tokenizer, question, fmt, labels, max(len(a) for a in answers))
        ctx, continuations = fold_common_prefix(ctx, answers)
        pairs += [(ctx, cont) for cont in continuations]
        owners += [q_index] * len(continuations)
    if all(len(cont) == 1 for _, cont in pairs):  # one-token answers (MMLU letters, folded labels): one pass per question
        contexts = {owner: ctx for owner, (ctx, _) in zip(owners, pairs)}
        table = last_position_logprobs(model, [contexts[q] for q in range(len(questions))], tokenizer.pad_token_id)
        scores = [float(table[owner, cont[0]]) for owner, (_, cont) in zip(owners, pairs)]
    else:
        scores = continuation_logprobs(model, pairs, tokenizer.pad_token_id)
    best: list[tuple[float, int]] = [(-float("inf"), -1)] * len(questions)
    position = [0] * len(questions)
    for owner, score in zip(owners, scores):
        if score > best[owner][0]:
            best[owner] = (score, position[owner])
        position[owner] += 1
    return [index for _, index in best]


def extract_label(text: str, labels: list[str]) -> int:
    """The index of the first label named in ``text`` (whole word, case-insensitive), or -1."""
    pattern = re.compile(r"\b(" + "|".join(re.escape(label) for label in labels) + r")\b", re.IGNORECASE)
    match = pattern.search(text)
    if not match:
        return -1
    lowered = [label.lower() for label in labels]
    return lowered.index(match.group(1).lower())


@torch.no_grad()
def score_generate(model: nn.Module, tokenizer, questions: list[Question], fmt: PromptFormat, max_new_tokens: int = 24) -> list[int]:
    """LLM-Adapters protocol: greedy generation, then the first candidate label found in the text (-1: none)."""
    contexts = [context_ids(tokenizer, q, fmt, True, max_new_tokens) for q in questions]
    width = max(len(c) for c in contexts)
    ids = torch.full((len(contexts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, ctx in enumerate(contexts):  # left-padded: every prompt ends where generation starts
        ids[row, width - len(ctx):] = torch.tensor(ctx, dtype=torch.long)
        mask[row, width - len(ctx):] = 1
    device = model_device(model)
    use_cache = model.config.use_cache
    model.config.use_cache = True
    try:
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    finally:
        model.config.use_cache = use_cache
    answers = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [extract_label(text, q.labels) for text, q in zip(answers, questions)]
