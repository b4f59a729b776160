"""Scoring by hand-checkable numbers: a toy LM that always predicts "next id = this id + 1"."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xgblora_cli.scoring import continuation_logprobs, extract_label

V = 10


class Shift(nn.Module):
    """A causal LM whose next-token logits are 5 at (token + 1) % V and 0 elsewhere."""

    class Decoder(nn.Module):
        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"last_hidden_state": torch.nn.functional.one_hot(input_ids, V).float()})()

    def __init__(self) -> None:
        super().__init__()
        self.decoder = self.Decoder()
        self.head = nn.Linear(V, V, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(5.0 * torch.roll(torch.eye(V), 1, dims=0))

    def get_decoder(self):
        return self.decoder

    def get_output_embeddings(self):
        return self.head


def test_continuation_logprobs_are_the_hand_computed_values() -> None:
    hit = 5 - math.log(math.exp(5) + V - 1)  # log p of the predicted token
    miss = 0 - math.log(math.exp(5) + V - 1)
    scores = continuation_logprobs(Shift(), [([1, 2], [3, 4]), ([1, 2], [3, 9]), ([7], [2])], pad_id=0)
    assert scores == pytest.approx([2 * hit, hit + miss, miss], abs=1e-5)
    assert max(range(2), key=lambda i: scores[i]) == 0  # the forced answer wins


def test_extract_label() -> None:
    labels = ["answer1", "answer2", "answer3"]
    assert extract_label("The correct answer is Answer2.", labels) == 1
    assert extract_label("answer3 or answer1", labels) == 2
    assert extract_label("no idea", labels) == -1
    assert extract_label("B) because", ["A", "B", "C", "D"]) == 1


def test_one_token_fast_path_agrees_with_the_general_path() -> None:
    from xgblora_cli.scoring import last_position_logprobs

    contexts = [[1, 2], [4], [7, 8, 9]]
    table = last_position_logprobs(Shift(), contexts, pad_id=0)
    general = continuation_logprobs(Shift(), [(c, [5]) for c in contexts], pad_id=0)
    assert [float(table[i, 5]) for i in range(3)] == pytest.approx(general, abs=1e-5)
    assert int(table[0].argmax()) == 3 and int(table[2].argmax()) == 0
