"""Boosters started from the gradient: blocks chosen by gradient norm, V from the gradient's top singular
vectors, separate rates for U and V, shrinkage at merge; and a resume mid-booster that makes the same boosters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, tiny_recipe, write_recipe
from tests.core.test_train import _final_weights, step_rows
from xgblora_cli.common.runtime import FAULT_ENV
from xgblora_cli.core.boosting import blocks_by_gradient
from xgblora_cli.core.gradient import block_scores, capture
from xgblora_cli.core.loss import causal_lm_loss
from xgblora_cli.core.record import Record
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.core.train import Trainer
from xgblora_cli.recipe_file import recipe_from_dict, recipe_to_yaml
from xgblora_cli.runner import prepare


def trainer_for(tmp_path: Path, model_dir: Path, **fields) -> Trainer:
    recipe = recipe_from_dict(tiny_recipe(tmp_path, model_dir, **fields), "r.yaml")
    setup = prepare(recipe, "r.yaml")
    run = RunDir(recipe.output_dir)
    run.create(recipe_to_yaml(recipe), {"model_dir": str(setup.model_dir), "dtype": "float32"}, overwrite=False)
    return Trainer(setup, run, show_progress=False)


def test_blocks_by_gradient_takes_the_largest_or_samples_in_proportion() -> None:
    scores = {0: 1.0, 1: 5.0, 2: 0.5, 3: 5.0, 4: 3.0}
    assert blocks_by_gradient(scores, 2, 0, 0) == [1, 3]
    assert blocks_by_gradient(scores, 3, 0, 0) == [1, 3, 4]
    drawn = [tuple(blocks_by_gradient(scores, 2, 0, t, sample=True)) for t in range(300)]
    assert drawn == [tuple(blocks_by_gradient(scores, 2, 0, t, sample=True)) for t in range(300)]  # seeded by position
    counts = torch.bincount(torch.tensor(drawn).flatten(), minlength=5)
    assert counts[1] > counts[0] > counts[2] and counts[3] > counts[4]  # in proportion to the scores
    assert len(set(drawn)) > 3
    assert blocks_by_gradient({0: 0.0, 1: 0.0, 2: 0.0}, 2, 0, 1, sample=True)  # all zero: drawn uniformly


def test_gradient_init_points_v_along_the_top_singular_vector_with_u_zero(tmp_path: Path, tiny_model_dir: Path) -> None:
    trainer = trainer_for(tmp_path, tiny_model_dir, booster_init="gradient", init_batches=2)
    model, engine = trainer.setup.model, trainer.engine
    blocks = engine.drawn_blocks(0)
    batches = trainer.probe.batches(0)
    layers = {name: layer for name, (_, layer) in engine.layers(blocks).items()}
    flows = capture(layers, engine.blocks[min(blocks)], batches, lambda b: causal_lm_loss(model, b)[0] / 2)
    random_rows = {}
    trainer._start_booster()
    booster = trainer.booster
    assert booster.blocks == blocks  # the schedule still draws the blocks
    for name, adapter in booster.adapters.items():
        _, _, vh = torch.linalg.svd(flows[name].matrix())
        a = adapter.lora_a.detach()[0]
        assert abs(float(a @ vh[0])) / float(a.norm()) > 0.999, name  # V along the top right singular vector
        assert not adapter.lora_b.any()  # U = 0: the model is unchanged
        random_rows[name] = float(a.norm())
    # the row norm is the random init's (same generator draw)
    engine.discard(booster)
    plain = engine.start(0)
    for name, adapter in plain.adapters.items():
        assert float(adapter.lora_a.detach()[0].norm()) == pytest.approx(random_rows[name], rel=1e-5)
    engine.discard(plain)


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_v_set_inside_the_first_step_equals_a_probe_pass_then_the_step(tmp_path: Path, tiny_model_dir: Path,
                                                                        grad_accum: int) -> None:
    """booster_init: gradient without a pass of its own: the booster's first step records the flows, sets V from
    them and re-forms U's gradient for that V; V and both gradients equal a probe pass followed by the step
    (with 3 micro-batches a step, the last two train with the new V as autograd sees it)."""
    grads = {}
    for fused in (True, False):
        trainer = trainer_for(tmp_path / str(fused), tiny_model_dir, booster_init="gradient",
                              train={"grad_accum": grad_accum, "max_grad_norm": 0})
        trainer.fuse_init = fused
        trainer._start_booster()
        assert (trainer.first_step is not None) == fused
        before = {name: a.lora_a.detach().clone() for name, a in trainer.booster.adapters.items()}
        trainer._accumulate()
        grads[fused] = {name: (a.lora_a.detach().clone(), a.lora_a.grad, a.lora_b.grad) for name, a in trainer.booster.adapters.items()}
        if fused:  # the booster started at random and turned along the gradient within the step
            assert any(not torch.equal(before[name], grads[True][name][0]) for name in before)
    assert grads[True].keys() == grads[False].keys()
    for name, (a, a_grad, b_grad) in grads[True].items():
        a_ref, a_grad_ref, b_grad_ref = grads[False][name]
        assert torch.allclose(a, a_ref, rtol=1e-4, atol=1e-6), name
        assert b_grad is not None and float(b_grad.norm()) > 0, name
        assert torch.allclose(b_grad, b_grad_ref, rtol=1e-4, atol=1e-7), name
        assert (a_grad is None or not a_grad.any()) and (a_grad_ref is None or not a_grad_ref.any())  # U = 0


def test_more_init_batches_than_the_step_has_keeps_the_probe_pass(tmp_path: Path, tiny_model_dir: Path) -> None:
    trainer = trainer_for(tmp_path, tiny_model_dir, booster_init="gradient", init_batches=2)
    trainer._start_booster()
    assert trainer.first_step is None  # V was set before the step, by the probe (checked above)


def test_gradient_schedule_picks_the_blocks_with_the_largest_gradient(tmp_path: Path, tiny_model_dir: Path) -> None:
    trainer = trainer_for(tmp_path, tiny_model_dir, block_schedule="gradient", layers_per_booster=2)
    model, engine = trainer.setup.model, trainer.engine
    engine.set_block_modes(0)
    scores = block_scores(engine.layers(list(range(4))), engine.blocks[0], trainer.probe.batches(0),
                          lambda b: causal_lm_loss(model, b)[0])
    engine.set_block_modes(None)
    trainer._start_booster()
    assert trainer.booster.blocks == sorted(sorted(scores, key=scores.get, reverse=True)[:2])


def test_u_learns_at_its_own_rate(tmp_path: Path, tiny_model_dir: Path) -> None:
    """AdamW's first step moves each element by about the rate: U's by ratio x V's."""
    steps = {}
    for ratio in (1.0, 4.0):
        trainer = trainer_for(tmp_path / str(ratio), tiny_model_dir, train={"u_lr_ratio": ratio, "max_grad_norm": 0,
                                                                             "learning_rate": 1e-3})
        trainer._start_booster()
        trainer._train_step()
        trainer._train_step()  # the second step: B is no longer zero, so A has a gradient too
        adapter = next(iter(trainer.booster.adapters.values()))
        steps[ratio] = float(adapter.lora_b.detach().abs().max())
    assert steps[4.0] == pytest.approx(4 * steps[1.0], rel=0.05)


def test_shrinkage_scales_what_is_merged_and_recorded(tmp_path: Path, tiny_model_dir: Path) -> None:
    trainer = trainer_for(tmp_path, tiny_model_dir, shrinkage=0.5, train={"max_steps": 3})
    trainer._start_booster()
    for _ in range(3):
        trainer._train_step()
        trainer.step += 1
    trained = {name: adapter.factors() for name, adapter in trainer.booster.adapters.items()}
    trainer._merge(trainer.booster)
    recorded = Record(trainer.run.path).load()[0].factors
    for name, (u, v) in trained.items():
        assert torch.equal(recorded[name][0], u * 0.5) and torch.equal(recorded[name][1], v)


@pytest.mark.parametrize("fields", [{"block_schedule": "gradient", "booster_init": "gradient"},
                                    {"block_schedule": "gradient_sample", "train": {"u_lr_ratio": 4.0}, "shrinkage": 0.7,
                                     "merge_search_batches": 1}],
                         ids=["gradient", "sampled"])
def test_sigkill_mid_booster_then_resume_makes_the_same_boosters(tmp_path: Path, tiny_model_dir: Path, fields: dict) -> None:
    straight = write_recipe(tmp_path / "a.yaml", **tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "a"), **fields))
    killed = write_recipe(tmp_path / "b.yaml", **tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "b"), **fields))
    assert run_cli("train", str(straight), "--no-progress").returncode == 0
    result = run_cli("train", str(killed), "--no-progress", env={FAULT_ENV: "5"})  # last checkpoint: step 4, booster 1
    assert result.returncode == -9, result.stderr
    assert RunDir(tmp_path / "b").load_checkpoint().blocks is not None
    assert run_cli("train", str(killed), "--resume", "--no-progress").returncode == 0
    a, b = Record(tmp_path / "a").load(), Record(tmp_path / "b").load()
    assert [x.blocks for x in a] == [x.blocks for x in b]
    for x, y in zip(a, b):
        for name in x.factors:
            assert torch.allclose(x.factors[name][0], y.factors[name][0], atol=1e-6)
            assert torch.allclose(x.factors[name][1], y.factors[name][1], atol=1e-6)
    wa, wb = _final_weights(tmp_path / "a", tiny_model_dir), _final_weights(tmp_path / "b", tiny_model_dir)
    assert all(torch.allclose(wa[n], wb[n], atol=1e-6) for n in wa)
    assert [r["loss"] for r in step_rows(tmp_path / "b")] == pytest.approx([r["loss"] for r in step_rows(tmp_path / "a")], abs=1e-5)


def test_a_merge_line_search_keeps_a_useful_booster_and_drops_a_harmful_one(tmp_path: Path, tiny_model_dir: Path) -> None:
    trainer = trainer_for(tmp_path, tiny_model_dir, merge_search_batches=2, train={"max_steps": 6, "learning_rate": 3e-2})
    trainer._start_booster()
    for _ in range(3):  # a trained booster lowers the loss on fresh batches of the same data
        trainer._train_step()
        trainer.step += 1
    assert trainer.probe.merge_scale(trainer.booster, trainer.step) in (1.0, 0.5)
    with torch.no_grad():  # the same booster reversed and magnified raises it: merged at 0, i.e. not at all
        for adapter in trainer.booster.adapters.values():
            adapter.lora_b.mul_(-10.0)
    before = {name.replace(".base.", "."): p.detach().clone() for name, p in trainer.setup.model.named_parameters()
              if "lora_" not in name}
    trainer._merge(trainer.booster)
    after = dict(trainer.setup.model.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)  # the base weights as they were: nothing merged
    event = [line for line in (trainer.run.path / "metrics.jsonl").read_text().splitlines() if "booster_merged" in line][-1]
    assert '"merge_scale": 0.0' in event
    assert all(not u.any() for u, _ in Record(trainer.run.path).load()[0].factors.values())
