"""Training data: Alpaca-style records, prompt rendering, response-only loss masks, a resumable order.

Records are ``{"instruction", "input" (optional), "output"}`` from a local ``.json`` (a list) or ``.jsonl``
file, or a hub dataset name read through ``datasets``. The prompt is the tokenizer's chat template when it has
one (``prompt_template: auto``), else a plain Alpaca template; only response tokens carry a label. The order of
examples is a permutation seeded by ``(seed, epoch)``, so micro-batch m is the same batch in any run of the
recipe, resumed or not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from xgblora_cli.errors import UserError, first_line
from xgblora_cli.seeding import seeded_generator

IGNORE = -100
PLAIN_PROMPT = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"


def _read_local(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"dataset '{path}': not valid JSON (line {err.lineno}): {err.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise UserError(f"dataset '{path}': expected a JSON list of records or JSON Lines, got a {type(data).__name__}")
    return data


def _read_hub(name: str, split: str) -> list:
    try:
        import datasets

        return list(datasets.load_dataset(name, split=split))
    except Exception as err:
        raise UserError(f"dataset '{name}': not a local .json/.jsonl file and not loadable from the hub: {first_line(err)}") from None


def load_records(spec: str, split: str = "train") -> list[dict[str, str]]:
    """Validated records ``{"instruction", "input", "output"}`` from a local file or a hub dataset."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix not in (".json", ".jsonl"):
            raise UserError(f"dataset '{spec}': local datasets must be .json or .jsonl files")
        raw = _read_local(path)
    elif path.suffix in (".json", ".jsonl") or spec.startswith((".", "/", "~")):
        raise UserError(f"dataset '{spec}': file not found")
    else:
        raw = _read_hub(spec, split)
    if not raw:
        raise UserError(f"dataset '{spec}': no records")
    records = []
    for number, item in enumerate(raw):
        if not isinstance(item, dict):
            raise UserError(f"dataset '{spec}': record {number} is not an object with instruction/input/output")
        for key in ("instruction", "output"):
            if not isinstance(item.get(key), str):
                raise UserError(f"dataset '{spec}': record {number} has no string field '{key}' (records need instruction, output and optionally input)")
        extra = item.get("input") or ""
        if not isinstance(extra, str):
            raise UserError(f"dataset '{spec}': record {number} field 'input' must be a string")
        records.append({"instruction": item["instruction"], "input": extra, "output": item["output"]})
    return records


def uses_chat_template(tokenizer, template: str) -> bool:
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise UserError("prompt_template: 'chat' needs a tokenizer with a chat template; this one has none (use 'plain' or 'auto')")
    return template == "chat" or (template == "auto" and bool(getattr(tokenizer, "chat_template", None)))


def render(tokenizer, record: dict[str, str], chat: bool) -> tuple[str, str]:
    """``(prompt, response)`` text for one record; the loss covers the response only."""
    user = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
    if not chat:
        block = f"### Input:\n{record['input']}\n\n" if record["input"] else ""
        prompt = PLAIN_PROMPT.format(instruction=record["instruction"], input_block=block)
        return prompt, record["output"] + (tokenizer.eos_token or "")
    messages = [{"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": record["output"]}], tokenize=False)
    if not full.startswith(prompt):
        raise UserError("prompt_template: the tokenizer's chat template does not extend the prompt with the answer; use prompt_template: plain")
    return prompt, full[len(prompt):]


def encode(tokenizer, prompt: str, response: str, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (``-100`` on the prompt), truncated to ``max_len``.

    Over-long examples keep at least half the budget (or all of it) for the response and cut the prompt
    from the left, so the question's end, nearest the answer, survives.
    """
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    keep_r = min(len(r), max(max_len - len(p), max_len // 2))
    keep_p = min(len(p), max_len - keep_r)
    p = p[len(p) - keep_p:]
    r = r[:keep_r]
    return p + r, [IGNORE] * len(p) + r


@dataclass
class Batch:
    input_ids: torch.Tensor  # (batch, seq) long
    attention_mask: torch.Tensor  # (batch, seq) long
    labels: torch.Tensor  # (batch, seq) long, -100 where no loss

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device))


class BatchStream:
    """Micro-batch ``m`` of a run, the same on every call: positions ``m*B .. m*B+B-1`` of a seeded order."""

    def __init__(self, tokenizer, records: list[dict[str, str]], batch_size: int, max_len: int, seed: int, chat: bool) -> None:
        self.tokenizer = tokenizer
        self.records = records
        self.batch_size = batch_size
        self.max_len = max_len
        self.seed = seed
        self.chat = chat
        self._orders: dict[int, list[int]] = {}
        self._encoded: dict[int, tuple[list[int], list[int]]] = {}

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = seeded_generator(self.seed, epoch, "data")
            self._orders = {epoch: torch.randperm(len(self.records), generator=generator).tolist()}
        return self._orders[epoch]

    def example(self, position: int) -> tuple[list[int], list[int]]:
        """Encoded example at global position ``position`` (epoch = position // N)."""
        n = len(self.records)
        index = self._order(position // n)[position % n]
        if index not in self._encoded:
            prompt, response = render(self.tokenizer, self.records[index], self.chat)
            self._encoded[index] = encode(self.tokenizer, prompt, response, self.max_len)
        return self._encoded[index]

    def batch(self, micro_step: int, part: range | None = None) -> Batch:
        """Micro-batch ``micro_step``, or only its positions ``part`` (a data-parallel rank's slice)."""
        positions = range(self.batch_size) if part is None else part
        items = [self.example(micro_step * self.batch_size + j) for j in positions]
        return collate(items, self.tokenizer.pad_token_id)


def collate(items: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Right-pad encoded (ids, labels) pairs to the longest one."""
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, (ids, labs) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(labs)] = torch.tensor(labs)
        mask[row, : len(ids)] = 1
    return Batch(input_ids, mask, labels)
