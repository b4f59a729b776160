"""Training data: Alpaca-style records, batches with response-only labels, a resumable order.

Records are ``{"instruction", "input" (optional), "output"}`` from a local ``.json`` (a list) or ``.jsonl``
file, or a hub dataset name read through ``datasets``. How a record becomes tokens (template, BOS, length) is
the run's :class:`~xgblora_cli.prompts.PromptFormat`; only response tokens carry a label. The order of
examples is a permutation seeded by ``(seed, epoch)``, so micro-batch m is the same batch in any run of the
recipe, resumed or not.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from xgblora_cli.errors import UserError
from xgblora_cli.hubdata import hub_rows
from xgblora_cli.jsonfile import read_records
from xgblora_cli.prompts import IGNORE, PromptFormat
from xgblora_cli.runtime import seeded_generator


def load_records(spec: str, split: str = "train") -> list[dict[str, str]]:
    """Validated records ``{"instruction", "input", "output"}`` from a local file or a hub dataset."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix not in (".json", ".jsonl"):
            raise UserError(f"dataset '{spec}': local datasets must be .json or .jsonl files")
        raw = read_records(path, f"dataset '{spec}'")
    elif path.suffix in (".json", ".jsonl") or spec.startswith((".", "/", "~")):
        raise UserError(f"dataset '{spec}': file not found")
    else:
        raw = hub_rows(spec, None, split, f"dataset '{spec}': not a local .json/.jsonl file and not loadable from the hub: {{error}}")
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
    """Micro-batch ``m`` of a run, the same on every call: positions ``m*B .. m*B+B-1`` of a seeded order.

    Encoded examples are cached, the ``cache_size`` most recently used ones only, so a large dataset is not kept
    in memory twice (once as records, once as token lists).
    """

    def __init__(self, tokenizer, records: list[dict[str, str]], batch_size: int, prompt: PromptFormat, seed: int,
                 cache_size: int = 4096) -> None:
        self.tokenizer = tokenizer
        self.records = records
        self.batch_size = batch_size
        self.prompt = prompt
        self.seed = seed
        self.cache_size = cache_size
        self._orders: dict[int, list[int]] = {}
        self._encoded: OrderedDict[int, tuple[list[int], list[int]]] = OrderedDict()

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = seeded_generator(self.seed, epoch, "data")
            self._orders = {epoch: torch.randperm(len(self.records), generator=generator).tolist()}
        return self._orders[epoch]

    def example(self, position: int) -> tuple[list[int], list[int]]:
        """Encoded example at global position ``position`` (epoch = position // N)."""
        n = len(self.records)
        index = self._order(position // n)[position % n]
        if index in self._encoded:
            self._encoded.move_to_end(index)
            return self._encoded[index]
        prompt, response = self.prompt.render(self.tokenizer, self.records[index])
        encoded = self._encoded[index] = self.prompt.encode(self.tokenizer, prompt, response)
        if len(self._encoded) > self.cache_size:
            self._encoded.popitem(last=False)
        return encoded

    def batch(self, micro_step: int, part: range | None = None) -> Batch:
        """Micro-batch ``micro_step``, or only its positions ``part`` (a data-parallel rank's slice)."""
        positions = range(self.batch_size) if part is None else part
        items = [self.example(micro_step * self.batch_size + j) for j in positions]
        return collate(items, self.tokenizer.pad_token_id)


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to the longest: ``(ids, attention_mask)``, both (len(sequences), longest) long."""
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def collate(items: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Right-pad encoded (ids, labels) pairs to the longest one; padding carries no label."""
    input_ids, mask = pad_right([ids for ids, _ in items], pad_id)
    labels, _ = pad_right([labs for _, labs in items], IGNORE)
    return Batch(input_ids, mask, labels)
