"""The boosting engine on a tiny random LLaMA: block draws, fresh optimizer state, no autograd below the
lowest adapted block, exact merges that touch only adapted weights, checkpointing that changes no gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TRAIN_DATA
from xgblora_cli.common.errors import UserError
from xgblora_cli.core.boosting import (
    BoostingEngine,
    booster_blocks,
    find_targets,
    trainable_per_booster,
)
from xgblora_cli.core.loss import causal_lm_loss
from xgblora_cli.core.merge import FactorStack, write_merged
from xgblora_cli.core.record import BoosterFactors
from xgblora_cli.core.train import make_optimizer
from xgblora_cli.data.batches import BatchStream
from xgblora_cli.data.formats import load_records
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.models.base_weights import BaseWeights
from xgblora_cli.models.loading import load_model, load_tokenizer
from xgblora_cli.recipe import DEFAULT_TARGETS, BoosterPlan, TrainArgs


def build(model_dir: Path, k: int = 2, rank: int = 1, checkpointing: bool = False):
    model = load_model(model_dir, "float32")
    plan = BoosterPlan(rank=rank, alpha=2.0 * rank, layers_per_booster=k, steps_per_booster=3, num_boosters=4, num_layers=4)
    engine = BoostingEngine(model, plan, list(DEFAULT_TARGETS), 0, checkpointing)
    tokenizer = load_tokenizer(model_dir)
    stream = BatchStream(tokenizer, load_records(str(TRAIN_DATA)), 2, PromptFormat("chat", (), 48), seed=0)
    return model, engine, stream


def merge(model, engine: BoostingEngine, booster) -> BoosterFactors:
    """What the trainer does with a finished booster: detach it and fold its factors into the weights exactly."""
    done = engine.finish(booster)
    stack = FactorStack()
    write_merged(model, BaseWeights(Path(model.config.name_or_path)), stack, stack.add(done))
    return done


def index_with_blocks(k: int, wanted: list[int]) -> int:
    return next(t for t in range(1000) if booster_blocks(0, t, 4, k) == wanted)


def test_blocks_are_distinct_seeded_by_position_and_cover_the_model() -> None:
    draws = [booster_blocks(7, t, 30, 4) for t in range(200)]
    assert all(len(set(d)) == 4 and d == sorted(d) for d in draws)
    assert draws == [booster_blocks(7, t, 30, 4) for t in range(200)]  # same (seed, t) -> same blocks
    assert draws != [booster_blocks(8, t, 30, 4) for t in range(200)]
    assert len({tuple(d) for d in draws}) > 150
    counts = torch.bincount(torch.tensor(draws).flatten(), minlength=30)
    assert counts.min() > 10  # every block is drawn; expected 200*4/30 ~ 27 each


def test_trainable_parameters_per_booster(tiny_model_dir: Path) -> None:
    model, engine, _ = build(tiny_model_dir, k=2, rank=1)
    # per block: q 32+32, k 32+16, v 32+16, o 32+32, gate 32+64, up 32+64, down 64+32 = 512
    assert trainable_per_booster(engine.targets, engine.plan) == 2 * 512
    booster = engine.start(0)
    assert sum(p.numel() for p in booster.parameters()) == 2 * 512
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n, _ in model.named_parameters() if "lora_" in n
    ]


def test_missing_target_modules_are_named(tiny_model_dir: Path) -> None:
    model = load_model(tiny_model_dir, "float32")
    with pytest.raises(UserError, match=r"target_modules: qkv match no linear layer.*they have: down_proj, gate_proj"):
        find_targets(model, ["q_proj", "qkv"])


def test_each_booster_gets_a_fresh_optimizer(tiny_model_dir: Path) -> None:
    model, engine, stream = build(tiny_model_dir)
    args = TrainArgs(learning_rate=1e-2)
    first = engine.start(0)
    opt = make_optimizer(first, args, 1e-2)
    for step in range(3):
        causal_lm_loss(model, stream.batch(step))[0].backward()
        opt.step()
        opt.zero_grad()
    old_moments = [opt.state[p]["exp_avg"].clone() for p in first.parameters()]
    assert any(m.abs().sum() > 0 for m in old_moments)
    merge(model, engine, first)

    second = engine.start(1)
    new_opt = make_optimizer(second, args, 1e-2)
    assert len(new_opt.state) == 0
    assert not {id(p) for p in first.parameters()} & {id(p) for g in new_opt.param_groups for p in g["params"]}
    causal_lm_loss(model, stream.batch(3))[0].backward()
    grads = [p.grad.clone() for p in second.parameters()]
    new_opt.step()
    # after one step from empty state, Adam's first moment is exactly (1 - beta1) * grad: no old moment leaked in
    for p, g in zip(second.parameters(), grads):
        assert torch.allclose(new_opt.state[p]["exp_avg"], 0.1 * g, rtol=0, atol=1e-12)
        assert float(new_opt.state[p]["step"]) == 1.0


def _saved_tensors_per_block(model, engine, batch) -> list[int]:
    counts = [0] * len(engine.blocks)
    current = {"block": None}
    handles = []
    for i, block in enumerate(engine.blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__("block", i)))
        handles.append(block.register_forward_hook(lambda m, a, o: current.__setitem__("block", None)))

    def pack(t):
        if current["block"] is not None:
            counts[current["block"]] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        causal_lm_loss(model, batch)
    for h in handles:
        h.remove()
    return counts


def test_blocks_below_the_lowest_booster_block_keep_no_activations(tiny_model_dir: Path) -> None:
    model, engine, stream = build(tiny_model_dir, k=1)
    engine.start(index_with_blocks(1, [2]))
    counts = _saved_tensors_per_block(model, engine, stream.batch(0))
    assert counts[0] == 0 and counts[1] == 0
    assert counts[2] > 0 and counts[3] > 0


def test_checkpointing_keeps_fewer_activations_and_the_same_gradients(tiny_model_dir: Path) -> None:
    grads, saved = [], []
    for checkpointing in (False, True):
        model, engine, stream = build(tiny_model_dir, k=2, checkpointing=checkpointing)
        booster = engine.start(index_with_blocks(2, [1, 3]))
        with torch.no_grad():
            for p in booster.parameters():
                p.add_(0.01)
        saved.append(sum(_saved_tensors_per_block(model, engine, stream.batch(0))))
        causal_lm_loss(model, stream.batch(0))[0].backward()
        grads.append([p.grad.clone() for p in booster.parameters()])
    assert saved[1] < saved[0]
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_merge_is_exact_and_touches_only_adapted_weights(tiny_model_dir: Path) -> None:
    model, engine, stream = build(tiny_model_dir, k=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    booster = engine.start(0)
    opt = make_optimizer(booster, TrainArgs(), 5e-2)
    for step in range(3):
        causal_lm_loss(model, stream.batch(step))[0].backward()
        opt.step()
        opt.zero_grad()
    batch = stream.batch(5)
    with torch.no_grad():
        with_adapters = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    deltas = {n: a.delta() for n, a in booster.adapters.items()}
    record = merge(model, engine, booster)
    assert sorted(record.factors) == sorted(deltas) and len(deltas) == 2 * 7
    after = dict(model.named_parameters())
    assert sorted(after) == sorted(before)  # adapters are gone
    for name, value in after.items():
        if name in deltas:
            assert torch.allclose(value, before[name] + deltas[name], atol=1e-6)
            assert not torch.equal(value, before[name])
        else:
            assert torch.equal(value, before[name]), name
    with torch.no_grad():
        merged = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.allclose(merged, with_adapters, atol=1e-4)


def test_the_cycle_schedule_adapts_every_block_equally_often() -> None:
    from collections import Counter

    draws = [booster_blocks(3, t, 8, 2, "cycle") for t in range(40)]  # 10 cycles of 8 blocks, 2 at a time
    assert all(len(set(d)) == 2 for d in draws)
    assert set(Counter(b for d in draws for b in d).values()) == {10}
    assert draws == [booster_blocks(3, t, 8, 2, "cycle") for t in range(40)]  # seeded by position
    uneven = Counter(b for t in range(300) for b in booster_blocks(0, t, 30, 4, "cycle"))  # 30 blocks, 4 at a time
    assert max(uneven.values()) - min(uneven.values()) <= 2
    independent = Counter(b for t in range(300) for b in booster_blocks(0, t, 30, 4))
    assert max(independent.values()) - min(independent.values()) > 2  # what the paper's draws give
