"""Scoring by hand-checkable numbers: a toy LM that always predicts "next id = this id + 1"."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from xgblora_cli.evaluation.scoring import continuation_logprobs, extract_label

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
    from xgblora_cli.evaluation.scoring import last_position_logprobs

    contexts = [[1, 2], [4], [7, 8, 9]]
    table = last_position_logprobs(Shift(), contexts, pad_id=0)
    general = continuation_logprobs(Shift(), [(c, [5]) for c in contexts], pad_id=0)
    assert [float(table[i, 5]) for i in range(3)] == pytest.approx(general, abs=1e-5)
    assert int(table[0].argmax()) == 3 and int(table[2].argmax()) == 0


def test_fold_common_prefix_moves_shared_tokens_and_keeps_one() -> None:
    from xgblora_cli.evaluation.scoring import fold_common_prefix

    assert fold_common_prefix([1], [[2, 3, 4], [2, 3, 5]]) == ([1, 2, 3], [[4], [5]])
    assert fold_common_prefix([1], [[2, 3], [2, 3, 4]]) == ([1, 2], [[3], [3, 4]])  # the shorter keeps one token
    assert fold_common_prefix([1], [[2], [2]]) == ([1], [[2], [2]])
    assert fold_common_prefix([1], [[6, 3], [2, 3]]) == ([1], [[6, 3], [2, 3]])


def test_folding_leaves_the_ranking_as_scoring_every_answer_in_full() -> None:
    from xgblora_cli.evaluation.scoring import fold_common_prefix

    generator = torch.Generator().manual_seed(0)
    tokens = lambda low, high: torch.randint(1, V, (int(torch.randint(low, high, (1,), generator=generator)),),  # noqa: E731
                                             generator=generator).tolist()
    for _ in range(50):
        context, shared = tokens(3, 4), tokens(0, 3)
        answers = [shared + tokens(1, 3) for _ in range(3)]
        full = continuation_logprobs(Shift(), [(context, a) for a in answers], pad_id=0)
        folded_context, rest = fold_common_prefix(context, answers)
        folded = continuation_logprobs(Shift(), [(folded_context, r) for r in rest], pad_id=0)
        offsets = [f - g for f, g in zip(full, folded)]  # the shared tokens' log-probability: the same for all
        assert offsets == pytest.approx([offsets[0]] * 3, abs=1e-5)
