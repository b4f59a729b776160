"""Training batches: records (see formats.py) encoded with labels on what is learned, padded or packed, in a
resumable order.

How a record becomes tokens (template, BOS, length, which tokens carry a label) is the run's
:class:`~xgblora_cli.data.prompts.PromptFormat`. The order of examples is a permutation seeded by ``(seed, epoch)``,
so micro-batch m is the same batch in any run of the recipe, resumed or not. With packing, consecutive examples
of that order fill rows of ``max_len`` tokens (packing.py); row r is then as fixed as position p is without it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from xgblora_cli.common.runtime import seeded_generator
from xgblora_cli.data.packing import pack_epoch
from xgblora_cli.data.prompts import IGNORE, PromptFormat


@dataclass
class Batch:
    """Model inputs and labels. Packed rows carry ``position_ids`` restarting at 0 for every example; the model is
    then given no attention mask, and transformers builds the block-diagonal causal mask from the positions (or
    uses variable-length flash attention), so examples sharing a row never see each other."""

    input_ids: torch.Tensor  # (batch, seq) long
    attention_mask: torch.Tensor  # (batch, seq) long: 1 on real tokens (counts them; not passed when packed)
    labels: torch.Tensor  # (batch, seq) long, -100 where no loss
    position_ids: torch.Tensor | None = None  # (batch, seq) long, packed rows only

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """What the decoder is called with."""
        if self.position_ids is None:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        return {"input_ids": self.input_ids, "position_ids": self.position_ids}

    def to(self, device: torch.device | str) -> "Batch":
        positions = None if self.position_ids is None else self.position_ids.to(device)
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device), positions)


def encode_record(tokenizer, prompt: PromptFormat, record: dict) -> tuple[list[int], list[int]]:
    """A training record as (ids, labels): an Alpaca record as prompt + response, a conversation turn by turn."""
    if "messages" in record:
        return prompt.encode_conversation(tokenizer, record["messages"])
    return prompt.encode(tokenizer, *prompt.render(tokenizer, record))


class BatchStream:
    """Micro-batch ``m`` of a run, the same on every call: positions ``m*B .. m*B+B-1`` of a seeded order, or, with
    ``packing``, rows ``m*B .. m*B+B-1`` of that order packed into rows of ``prompt.max_len`` tokens.

    Encoded examples are cached, the ``cache_size`` most recently used ones only, so a large dataset is not kept
    in memory twice (once as records, once as token lists).
    """

    def __init__(self, tokenizer, records: list[dict], batch_size: int, prompt: PromptFormat, seed: int,
                 cache_size: int = 4096, packing: bool = False) -> None:
        self.tokenizer = tokenizer
        self.records = records
        self.batch_size = batch_size
        self.prompt = prompt
        self.seed = seed
        self.cache_size = cache_size
        self.packing = packing
        self._orders: dict[int, list[int]] = {}
        self._encoded: OrderedDict[int, tuple[list[int], list[int]]] = OrderedDict()
        self._lengths: dict[int, int] = {}
        self._rows: list[list[int]] = []  # packed rows of the epochs laid out so far, as example indices
        self._epochs_packed = 0

    def encoded(self, index: int) -> tuple[list[int], list[int]]:
        """Record ``index`` as (ids, labels): an Alpaca record as prompt + response, a conversation turn by turn."""
        if index in self._encoded:
            self._encoded.move_to_end(index)
            return self._encoded[index]
        encoded = self._encoded[index] = encode_record(self.tokenizer, self.prompt, self.records[index])
        self._lengths[index] = len(encoded[0])
        if len(self._encoded) > self.cache_size:
            self._encoded.popitem(last=False)
        return encoded

    def drop_unlabelled(self) -> int:
        """Encode every record once and leave out those with no labelled token at this length (an empty answer);
        returns how many were left out (the caller reports them)."""
        keep = [i for i in range(len(self.records)) if any(label != IGNORE for label in self.encoded(i)[1][1:])]
        dropped = len(self.records) - len(keep)
        if dropped:
            self.records = [self.records[i] for i in keep]
            self._encoded.clear()
            self._lengths.clear()
        return dropped

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            generator = seeded_generator(self.seed, epoch, "data")
            self._orders = {epoch: torch.randperm(len(self.records), generator=generator).tolist()}
        return self._orders[epoch]

    def example(self, position: int) -> tuple[list[int], list[int]]:
        """Encoded example at global position ``position`` (epoch = position // N)."""
        n = len(self.records)
        return self.encoded(self._order(position // n)[position % n])

    def row(self, number: int) -> list[int]:
        """The example indices packed into global row ``number`` (epochs laid out one after another)."""
        while len(self._rows) <= number:
            order = self._order(self._epochs_packed)
            self._rows += pack_epoch([self._length(i) for i in order], order, self.prompt.max_len)
            self._epochs_packed += 1
        return self._rows[number]

    def _length(self, index: int) -> int:
        return self._lengths[index] if index in self._lengths else len(self.encoded(index)[0])

    def batch(self, micro_step: int, part: range | None = None) -> Batch:
        """Micro-batch ``micro_step``, or only its positions ``part`` (a data-parallel rank's slice)."""
        positions = range(self.batch_size) if part is None else part
        if self.packing:
            rows = [[self.encoded(i) for i in self.row(micro_step * self.batch_size + j)] for j in positions]
            return collate_packed(rows, self.tokenizer.pad_token_id, self.prompt.max_len)
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


def collate_packed(rows: list[list[tuple[list[int], list[int]]]], pad_id: int, width: int) -> Batch:
    """Rows of several encoded examples each, ``width`` tokens wide: position ids restart at 0 for every example
    and for the padding after the last, and each example's first label is dropped (it would be predicted from the
    previous example's last token)."""
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, examples in enumerate(rows):
        start = 0
        for example_ids, example_labels in examples:
            end = start + len(example_ids)
            ids[r, start:end] = torch.tensor(example_ids, dtype=torch.long)
            labels[r, start + 1 : end] = torch.tensor(example_labels[1:], dtype=torch.long)
            positions[r, start:end] = torch.arange(len(example_ids))
            mask[r, start:end] = 1
            start = end
        positions[r, start:] = torch.arange(width - start)
    return Batch(ids, mask, labels, positions)
