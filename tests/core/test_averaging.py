"""Tail averaging: one record entry that turns the last weights into the mean of the weights at the last N
booster ends; in a run, appended once after the last booster, also across a kill and --resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, tiny_recipe, write_recipe
from tests.core.test_train import _final_weights, step_rows
from xgblora_cli.common.runtime import FAULT_ENV
from xgblora_cli.core.averaging import tail_average, tail_weights
from xgblora_cli.core.merge import exact_weight
from xgblora_cli.core.record import BoosterFactors, Record, boosters_at
from xgblora_cli.core.rundir import RunDir


def booster(t: int, names: list[str], rank: int = 2) -> BoosterFactors:
    g = torch.Generator().manual_seed(t)
    return BoosterFactors(t, [t, t + 1], {n: (torch.randn(6, rank, generator=g), torch.randn(rank, 5, generator=g)) for n in names})


def weight_after(w0: torch.Tensor, boosters: list[BoosterFactors], name: str) -> torch.Tensor:
    pairs = [b.factors[name] for b in boosters if name in b.factors]
    if not pairs:
        return exact_weight(w0, None, None)
    return exact_weight(w0, torch.cat([u for u, _ in pairs], 1), torch.cat([v for _, v in pairs], 0))


def test_tail_weights_run_from_whole_to_one_nth() -> None:
    assert tail_weights(4) == [1.0, 0.75, 0.5, 0.25]
    assert tail_weights(1) == [1.0]


def test_the_entry_makes_the_mean_of_the_weights_at_the_last_booster_ends() -> None:
    # weight "a" is in every booster, "b" only in some of the tail (so its factors in the entry are fewer)
    boosters = [booster(0, ["a", "b"]), booster(1, ["a"]), booster(2, ["a", "b"]), booster(3, ["a"]), booster(4, ["a", "b"], rank=1)]
    w0 = {n: torch.randn(6, 5, generator=torch.Generator().manual_seed(9)) for n in ("a", "b")}
    entry = tail_average(boosters[-3:])
    assert entry.index == 5 and entry.blocks == [2, 3, 4, 5]
    assert entry.factors["a"][0].shape == (6, 3) and entry.factors["a"][1].shape == (3, 5)  # boosters 3 and 4, ranks 2 + 1
    assert entry.factors["b"][0].shape == (6, 1)  # booster 4 only: booster 2 is the oldest of the tail, kept whole
    for name in ("a", "b"):
        mean = sum(weight_after(w0[name], boosters[: n + 1], name) for n in (2, 3, 4)) / 3
        averaged = weight_after(w0[name], boosters + [entry], name)
        assert torch.allclose(averaged, mean, rtol=0, atol=1e-6), name
        assert not torch.allclose(averaged, weight_after(w0[name], boosters, name), atol=1e-3)  # it did change the end


def test_a_run_ends_on_the_average_and_eval_step_still_sees_the_weights_as_trained(tmp_path: Path, tiny_model_dir: Path) -> None:
    plain = write_recipe(tmp_path / "a.yaml", **tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "a")))
    averaged = write_recipe(tmp_path / "b.yaml", **tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "b"), average_last=3))
    assert run_cli("train", str(plain), "--no-progress").returncode == 0
    assert run_cli("train", str(averaged), "--no-progress").returncode == 0
    a, b = Record(tmp_path / "a").load(), Record(tmp_path / "b").load()
    assert len(a) == 3 and len(b) == 4 and b[3].index == 3  # training is unchanged, the average is one more entry
    for x, y in zip(a, b):
        assert all(torch.equal(x.factors[n][0], y.factors[n][0]) for n in x.factors)
    assert [r["loss"] for r in step_rows(tmp_path / "a")] == [r["loss"] for r in step_rows(tmp_path / "b")]
    assert len(boosters_at(tmp_path / "b", 8)) == 4 and len(boosters_at(tmp_path / "b", 6)) == 2
    events = [line for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines() if "tail_averaged" in line]
    assert len(events) == 1 and '"boosters": [0, 1, 2]' in events[0]
    ends = {n: _final_weights(tmp_path / "a", tiny_model_dir, upto=n) for n in (1, 2, 3)}
    final = _final_weights(tmp_path / "b", tiny_model_dir)
    for name in final:
        assert torch.allclose(final[name], (ends[1][name] + ends[2][name] + ends[3][name]) / 3, rtol=0, atol=1e-6), name


@pytest.mark.parametrize("kill_at", [5, 8], ids=["mid_booster", "after_the_last_checkpoint"])
def test_a_killed_run_resumed_appends_the_average_once(tmp_path: Path, tiny_model_dir: Path, kill_at: int) -> None:
    fields = {"average_last": 2}
    straight = write_recipe(tmp_path / "a.yaml", **tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "a"), **fields))
    killed = write_recipe(tmp_path / "b.yaml", **tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "b"), **fields))
    assert run_cli("train", str(straight), "--no-progress").returncode == 0
    assert run_cli("train", str(killed), "--no-progress", env={FAULT_ENV: str(kill_at)}).returncode == -9
    assert RunDir(tmp_path / "b").info()["status"] == "running"
    assert run_cli("train", str(killed), "--resume", "--no-progress").returncode == 0
    assert len(Record(tmp_path / "b").load()) == len(Record(tmp_path / "a").load()) == 4
    wa, wb = _final_weights(tmp_path / "a", tiny_model_dir), _final_weights(tmp_path / "b", tiny_model_dir)
    assert all(torch.allclose(wa[n], wb[n], rtol=0, atol=1e-6) for n in wa)
