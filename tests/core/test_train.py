"""The training loop on a tiny model: durable run directory, LR schedule, SIGKILL + --resume = uninterrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT, run_cli, tiny_recipe, write_recipe

SST2_TRAIN = ROOT / "data" / "sst2_train_2000.jsonl"
from xgblora_cli.common.errors import UserError
from xgblora_cli.common.runtime import FAULT_ENV
from xgblora_cli.core.merge import apply_record
from xgblora_cli.core.record import Record
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.core.train import carry_second_moments, lr_at
from xgblora_cli.models.base_weights import BaseWeights
from xgblora_cli.models.loading import load_model
from xgblora_cli.recipe import TrainArgs
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import start_run


def test_lr_schedule_warmup_cosine_and_rewarmup() -> None:
    args = TrainArgs(max_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 0, args, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 0, args, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 0, args, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 0, args, 1.0) == pytest.approx(0.55)
    assert lr_at(100, 0, args, 1.0) == pytest.approx(0.1)
    flat = TrainArgs(max_steps=100, min_lr_ratio=1.0)
    assert [lr_at(s, 20, flat, 1.0, 4) for s in (20, 21, 23, 24)] == pytest.approx([0.25, 0.5, 1.0, 1.0])
    assert lr_at(20, 20, flat, 1.0) == 1.0  # no re-warmup unless asked


def test_each_booster_re_warms_its_rate_and_the_run_stores_the_value_it_used(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, train={"rewarmup_steps": 3, "min_lr_ratio": 1.0}), "r.yaml")
    run_dir = start_run(recipe, "r.yaml", progress=False)
    lrs = [r["lr"] for r in step_rows(run_dir)]  # boosters of 3 steps: a third, two thirds, the whole rate
    assert lrs == pytest.approx([1e-2 / 3, 2e-2 / 3, 1e-2] * 2 + [1e-2 / 3, 2e-2 / 3])
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["rewarmup_steps"] == 3


def test_a_run_directory_holds_recipe_metrics_record_and_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir), "r.yaml")
    run_dir = start_run(recipe, "r.yaml", progress=False)
    run = RunDir(run_dir)
    assert run.info()["status"] == "complete" and run.info()["plan"]["num_boosters"] == 3
    rows = step_rows(run.path)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["booster"] for r in rows] == [0, 0, 0, 1, 1, 1, 2, 2]
    assert all(set(r) >= {"loss", "lr", "booster", "tokens_per_s"} for r in rows)
    assert all(r["loss"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    boosters = Record(run_dir).load()
    assert [b.index for b in boosters] == [0, 1, 2]
    assert all(len(b.blocks) == 2 for b in boosters)
    assert run.load_checkpoint().step == 8 and run.load_checkpoint().booster is None
    assert (run_dir / "recipe.yaml").read_text().startswith("model:")


def test_training_lowers_the_loss(tmp_path: Path, tiny_model_dir: Path) -> None:
    fields = tiny_recipe(tmp_path, tiny_model_dir, layers_per_booster=4, steps_per_booster=10,
                         train={"max_steps": 40, "learning_rate": 3e-2, "batch_size": 4})
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    losses = [r["loss"] for r in step_rows(run_dir)]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1


def test_existing_runs_are_never_overwritten_silently(tmp_path: Path, tiny_model_dir: Path) -> None:
    fields = tiny_recipe(tmp_path, tiny_model_dir, steps_per_booster=2, train={"max_steps": 2})
    start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="holds another run; pass --resume to continue it, --force"):
        start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    with pytest.raises(UserError, match=r"recipe differs .*train.learning_rate \(run: 0.01, now: 0.02\)"):
        start_run(recipe_from_dict(fields, "r.yaml", ["train.learning_rate=0.02"]), "r.yaml", resume=True, progress=False)
    start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", overwrite=True, progress=False)


def test_a_run_started_before_a_key_existed_resumes_at_that_keys_default(tmp_path: Path, tiny_model_dir: Path) -> None:
    fields = tiny_recipe(tmp_path, tiny_model_dir, steps_per_booster=1, train={"max_steps": 2})
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    stored = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    del stored["average_last"], stored["train"]["u_lr_ratio"]  # as an older xgblora wrote it
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(stored))
    assert start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", resume=True, progress=False) == run_dir
    with pytest.raises(UserError, match=r"recipe differs .*average_last \(run: 0, now: 2\)"):
        start_run(recipe_from_dict({**fields, "average_last": 2}, "r.yaml"), "r.yaml", resume=True, progress=False)


def _final_weights(run_dir: Path, model_dir: Path, upto: int | None = None) -> dict[str, torch.Tensor]:
    """The weights of ``base + record`` (its first ``upto`` entries)."""
    model = load_model(model_dir, "float32")
    apply_record(model, BaseWeights(model_dir), Record(run_dir).load()[:upto])
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def step_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "event" not in r]


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_sigkill_mid_booster_then_resume_equals_an_uninterrupted_run(tmp_path: Path, tiny_model_dir: Path, packing: bool) -> None:
    """With packing too: the rows of a packed epoch follow from the seeded order alone, so a resume mid-epoch
    continues with the very rows an unbroken run trains on."""
    data = {"dataset": str(SST2_TRAIN), "train": {"packing": True, "max_seq_len": 512}} if packing else {}
    straight = write_recipe(tmp_path / "a.yaml", **tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "a"), **data))
    killed = write_recipe(tmp_path / "b.yaml", **tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "b"), **data))
    assert run_cli("train", str(straight), "--no-progress").returncode == 0

    # checkpoint_every=2 and kappa=3: killed after step 5, the last checkpoint is step 4, inside booster 1
    result = run_cli("train", str(killed), "--no-progress", env={FAULT_ENV: "5"})
    assert result.returncode == -9, result.stderr
    run = RunDir(tmp_path / "b")
    ckpt = run.load_checkpoint()
    assert (ckpt.step, ckpt.booster, ckpt.recorded) == (4, 1, 1) and run.info()["status"] == "running"
    assert len(step_rows(run.path)) == 5  # step 5 was logged, then lost

    resumed = run_cli("train", str(killed), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert run.info()["status"] == "complete"
    a, b = _final_weights(tmp_path / "a", tiny_model_dir), _final_weights(tmp_path / "b", tiny_model_dir)
    base = _final_weights(tmp_path / "nothing", tiny_model_dir)
    assert any(not torch.equal(a[n], base[n]) for n in a)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-6), name
    losses = lambda d: [r["loss"] for r in step_rows(d)]  # noqa: E731
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), abs=1e-5)
    assert len(losses(tmp_path / "b")) == 8
    if packing:  # rows held several examples: more tokens per step than one padded example each
        assert min(r["tokens"] for r in step_rows(tmp_path / "a")) > 2 * 2 * 160  # 2 rows, each beyond the longest example


def test_carry_second_moments_seeds_matching_slots_and_zeroes_first_moments() -> None:
    old = [torch.nn.Parameter(torch.randn(2, 3)), torch.nn.Parameter(torch.randn(4))]
    previous_opt = torch.optim.AdamW(old, lr=0.1)
    for _ in range(3):
        sum((p ** 2).sum() for p in old).backward()
        previous_opt.step()
        previous_opt.zero_grad()
    previous = previous_opt.state_dict()["state"]
    new = [torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(5))]  # slot 1: another shape
    fresh = torch.optim.AdamW(new, lr=0.1)
    assert carry_second_moments(fresh, previous) == 1
    state = fresh.state[new[0]]
    assert torch.equal(state["exp_avg_sq"], previous[0]["exp_avg_sq"]) and float(state["step"]) == 3.0
    assert not state["exp_avg"].any() and new[1] not in fresh.state
    (new[0].sum() + new[1].sum()).backward()
    fresh.step()  # torch's AdamW accepts the seeded state and fills the unseeded slot itself
    assert float(fresh.state[new[0]]["step"]) == 4.0 and float(fresh.state[new[1]]["step"]) == 1.0


def test_carried_moments_change_the_next_boosters_and_survive_a_kill_between_boosters(tmp_path: Path, tiny_model_dir: Path) -> None:
    """train.carry_moments: booster 2 starts from booster 1's second moments, so its updates differ from a fresh
    AdamW's; killed right after the first merge (the checkpoint between boosters), a resumed run still carries."""
    recipes = {name: write_recipe(tmp_path / f"{name}.yaml", **tiny_recipe(
        tmp_path, tiny_model_dir, output_dir=str(tmp_path / name), train={"carry_moments": name != "fresh"}))
        for name in ("fresh", "carry", "killed")}
    for name in ("fresh", "carry"):
        assert run_cli("train", str(recipes[name]), "--no-progress").returncode == 0
    result = run_cli("train", str(recipes["killed"]), "--no-progress", env={FAULT_ENV: "3"})
    assert result.returncode == -9, result.stderr
    ckpt = RunDir(tmp_path / "killed").load_checkpoint()
    assert (ckpt.step, ckpt.booster, ckpt.recorded) == (3, None, 1) and ckpt.optimizer["state"]
    assert run_cli("train", str(recipes["killed"]), "--resume", "--no-progress").returncode == 0

    losses = {name: [r["loss"] for r in step_rows(tmp_path / name)] for name in recipes}
    assert losses["carry"][:4] == losses["fresh"][:4]  # booster 1, and booster 2's first step (its B starts at 0)
    assert any(abs(a - b) > 1e-6 for a, b in zip(losses["carry"][4:], losses["fresh"][4:]))
    assert losses["killed"] == pytest.approx(losses["carry"], abs=1e-5)
    carry, killed = _final_weights(tmp_path / "carry", tiny_model_dir), _final_weights(tmp_path / "killed", tiny_model_dir)
    for name in carry:
        assert torch.allclose(carry[name], killed[name], rtol=0, atol=1e-6), name


def test_bfloat16_run_trains_and_merges_to_bfloat16(tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file

    from xgblora_cli.export.merged_folder import merge_run

    fields = tiny_recipe(tmp_path, tiny_model_dir, dtype="bfloat16", train={"max_steps": 6})
    run_dir = start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    merge_run(run_dir, tmp_path / "out")
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert all(t.dtype == torch.bfloat16 for t in merged.values())
    boosters = Record(run_dir).load()
    name = next(iter(boosters[0].factors))
    base = BaseWeights(tiny_model_dir).get(name).double()
    exact = base + sum(u.double() @ v.double() for b in boosters for n, (u, v) in b.factors.items() if n == name)
    assert torch.equal(merged[name], exact.to(torch.bfloat16))
    assert not torch.equal(merged[name], base.to(torch.bfloat16))


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    precious = tmp_path / "run"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    fields = tiny_recipe(tmp_path, tiny_model_dir, steps_per_booster=2, train={"max_steps": 2})
    with pytest.raises(UserError, match="is not empty and holds no xgblora run"):
        start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", overwrite=True, progress=False)
    assert (precious / "thesis.tex").read_text() == "years of work"


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_diverged_booster_is_discarded_and_training_goes_on(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    import xgblora_cli.core.train as train_module

    real_loss = train_module.causal_lm_loss
    calls = {"n": 0}

    def faulty(model, batch):  # the 5th micro-batch (step 5, inside booster 1) yields NaN
        calls["n"] += 1
        loss, count = real_loss(model, batch)
        return (loss * float("nan"), count) if calls["n"] == 5 else (loss, count)

    monkeypatch.setattr(train_module, "causal_lm_loss", faulty)
    run_dir = start_run(recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir), "r.yaml"), "r.yaml", progress=False)
    events = [r for r in _rows(run_dir) if r.get("event") == "booster_discarded"]
    assert events == [{"step": 5, "event": "booster_discarded", "booster": 1, "attempt": 0, "reason": "non-finite loss"}]
    boosters = Record(run_dir).load()
    assert [b.index for b in boosters] == [0, 1, 2]  # booster 1 was retried (fresh init) for its last step
    assert all(torch.isfinite(u).all() and torch.isfinite(v).all() for b in boosters for u, v in b.factors.values())
    weights = _final_weights(run_dir, tiny_model_dir)
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert RunDir(run_dir).info()["status"] == "complete"


def test_repeated_divergence_stops_with_a_clear_message(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    import xgblora_cli.core.train as train_module

    real_loss = train_module.causal_lm_loss
    monkeypatch.setattr(train_module, "causal_lm_loss", lambda m, b: (real_loss(m, b)[0] * float("inf"), 1))
    fields = tiny_recipe(tmp_path, tiny_model_dir, train={"max_failed_boosters": 2})
    with pytest.raises(UserError, match=r"training diverged: 2 boosters in a row were discarded .*lower train.learning_rate"):
        start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    assert len(Record(tmp_path / "run")) == 0  # nothing non-finite was ever merged
    assert [r["event"] for r in _rows(tmp_path / "run") if r["event"] != "booster_merged"] == ["booster_discarded"] * 2


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_usable(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    import xgblora_cli.common.fsutil as fsutil
    import xgblora_cli.core.rundir as rundir

    real_write = rundir.atomic_write_bytes
    calls = {"n": 0}

    real_fsync = fsutil.os.fsync

    def no_fsync(fd):
        raise OSError("simulated crash during checkpoint write")

    def crashing_write(path, data):  # the 3rd checkpoint write dies after the bytes hit the temporary file
        calls["n"] += 1
        fsutil.os.fsync = no_fsync if calls["n"] == 3 else real_fsync
        try:
            return real_write(path, data)
        finally:
            fsutil.os.fsync = real_fsync

    monkeypatch.setattr(rundir, "atomic_write_bytes", crashing_write)
    fields = tiny_recipe(tmp_path, tiny_model_dir)  # checkpoints at steps 2, 3 (merge), 4, ...
    with pytest.raises(OSError, match="simulated crash"):
        start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", progress=False)
    run = RunDir(tmp_path / "run")
    assert run.load_checkpoint().step == 3  # the previous checkpoint, whole
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]  # no half-written file left
    start_run(recipe_from_dict(fields, "r.yaml"), "r.yaml", resume=True, progress=False)
    assert run.info()["status"] == "complete" and [r["step"] for r in step_rows(run.path)] == list(range(1, 9))
