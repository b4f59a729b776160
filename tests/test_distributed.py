"""Data-parallel training on the CPU (gloo): 2 ranks merge identically and match one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import ROOT, tiny_recipe, train_in_memory, write_recipe
from xgblora_cli.common.errors import UserError
from xgblora_cli.common.runtime import Ranks
from xgblora_cli.core.record import Record
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.models.loading import load_model
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import prepare, start_run

TRAIN = {"max_steps": 6, "batch_size": 4, "grad_accum": 2, "learning_rate": 1e-2, "max_seq_len": 64, "checkpoint_every": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leave_rank(ranks: Ranks) -> None:
    """End a spawned rank whose results are saved: leave the process group, then exit without interpreter teardown,
    where gloo's threads sometimes abort a finished process (SIGABRT, "terminate called without an active
    exception"), which fails ``mp.spawn`` after the work is done (what ``runtime.exit_worker`` does for torchrun)."""
    from xgblora_cli.common.runtime import shutdown

    shutdown(ranks)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def final_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, port: int, recipe_dict: dict, out: str) -> None:
    """One data-parallel rank: train through start_run's pieces, then save the weights it ended with."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from xgblora_cli.common.runtime import init_from_env

    ranks = init_from_env("cpu")
    setup, _ = train_in_memory(recipe_dict, ranks)
    torch.save(final_weights(setup.model), Path(out) / f"rank{rank}.pt")
    leave_rank(ranks)


def test_two_ranks_merge_identically_and_match_one_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe_dict = tiny_recipe(tmp_path / "dp", tiny_model_dir, device="cpu", layers_per_booster=2, steps_per_booster=3, train=TRAIN)
    (tmp_path / "dp").mkdir()
    mp.spawn(_worker, args=(2, free_port(), recipe_dict, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")

    setup, run = train_in_memory(tiny_recipe(tmp_path / "one", tiny_model_dir, device="cpu", layers_per_booster=2, steps_per_booster=3, train=TRAIN))
    reference = final_weights(setup.model)

    base = final_weights(load_model(tiny_model_dir, "float32"))
    assert any(not torch.equal(base[k], rank0[k]) for k in base), "training changed no weight"
    for name in reference:
        assert torch.equal(rank0[name], rank1[name]), f"ranks differ on {name}"
        torch.testing.assert_close(rank0[name], reference[name], atol=1e-5, rtol=0)
    # only rank 0 wrote: one metrics row per step, and the record has every booster once
    rows = [json.loads(line) for line in (tmp_path / "dp" / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "event" not in r]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert len(Record(tmp_path / "dp" / "run").load()) == 2
    single_rows = [r for line in run.metrics_file.read_text().splitlines() if "event" not in (r := json.loads(line))]
    for a, b in zip(rows, single_rows):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4) and a["tokens"] == b["tokens"]


def test_torchrun_launch_writes_one_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The documented launcher: torchrun -m xgblora_cli train; the result merges like a one-process run."""
    recipe = write_recipe(tmp_path / "r.yaml", **tiny_recipe(tmp_path, tiny_model_dir, device="cpu", train=TRAIN))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "xgblora_cli", "train", str(recipe), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = RunDir(tmp_path / "run")
    assert run.info()["status"] == "complete" and run.info()["ranks"] == 2
    assert done.stdout.count("done:") + done.stderr.count("done:") == 1  # rank 0 speaks, rank 1 does not
    boosters = Record(run.path).load()
    assert [b.index for b in boosters] == [0, 1]

    single_dir = tmp_path / "single"
    start_run(recipe_from_dict({**tiny_recipe(tmp_path, tiny_model_dir, device="cpu", train=TRAIN), "output_dir": str(single_dir)}, "r.yaml"),
              "r.yaml", progress=False)
    for dp, one in zip(boosters, Record(single_dir).load()):
        assert dp.blocks == one.blocks
        for name, (u, v) in dp.factors.items():
            torch.testing.assert_close(u @ v, one.factors[name][0] @ one.factors[name][1], atol=1e-6, rtol=0)


def test_batch_must_split_evenly_over_ranks(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe = recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, train={"batch_size": 3}), "r.yaml")
    with pytest.raises(UserError, match="train.batch_size: must be divisible by the 2 data-parallel ranks, got 3"):
        prepare(recipe, "r.yaml", Ranks(rank=0, world=2))
