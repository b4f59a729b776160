"""train.sharding: fsdp on 2 CPU ranks over gloo: each rank holds its rows of the base, merges exactly per shard, and
the run equals a one-process run (weights within 1e-5, the same merged folder); torchrun launch and resume too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import ROOT, run_cli, tiny_recipe, train_in_memory, write_recipe
from tests.test_distributed import free_port
from xgblora_cli.errors import UserError
from xgblora_cli.export import merge_run
from xgblora_cli.merge import shard_rows
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.record import Record
from xgblora_cli.rundir import RunDir
from xgblora_cli.runner import start_run

TRAIN = {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-2, "max_seq_len": 64, "checkpoint_every": 2, "sharding": "fsdp"}


def test_rows_split_like_torch_chunk() -> None:
    for rows, world in ((10, 2), (11, 2), (7, 4), (2, 4), (32, 3)):
        chunks = torch.arange(rows).chunk(world)
        for rank in range(world):
            start, stop = shard_rows(rows, world, rank)
            expected = chunks[rank].tolist() if rank < len(chunks) else []
            assert list(range(start, stop)) == expected, (rows, world, rank)


def _worker(rank: int, world: int, port: int, recipe_dict: dict, out: str) -> None:
    """One rank of a sharded run: train, then save its own shards and the reassembled full weights."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from xgblora_cli.runtime import init_from_env, shutdown

    ranks = init_from_env("cpu")
    setup, _ = train_in_memory(recipe_dict, ranks)
    shards = {n: p.to_local().clone() for n, p in setup.model.named_parameters()}
    full = {n: p.full_tensor().clone() for n, p in setup.model.named_parameters()}
    torch.save({"shards": shards, "full": full}, Path(out) / f"rank{rank}.pt")
    shutdown(ranks)


def test_two_sharded_ranks_equal_one_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe_dict = tiny_recipe(tmp_path / "fsdp", tiny_model_dir, layers_per_booster=2, steps_per_booster=3, train=TRAIN)
    (tmp_path / "fsdp").mkdir()
    mp.spawn(_worker, args=(2, free_port(), recipe_dict, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")

    setup, run = train_in_memory(tiny_recipe(tmp_path / "one", tiny_model_dir, layers_per_booster=2, steps_per_booster=3,
                                             train={**TRAIN, "sharding": "none"}))
    reference = {n: p.detach() for n, p in setup.model.named_parameters()}
    touched = {name for b in Record(run.path).load() for name in b.factors}
    assert touched
    for name, value in reference.items():
        rows = value.shape[0]
        assert rank0["shards"][name].shape[0] == shard_rows(rows, 2, 0)[1] - shard_rows(rows, 2, 0)[0]  # each rank: its rows
        reassembled = torch.cat([rank0["shards"][name], rank1["shards"][name]])
        assert torch.equal(reassembled, rank0["full"][name]) and torch.equal(rank0["full"][name], rank1["full"][name])
        torch.testing.assert_close(rank0["full"][name], value, atol=1e-5, rtol=0)

    # the record of the sharded run merges to the same folder as the one-process run's
    sharded_run = tmp_path / "fsdp" / "run"
    merge_run(sharded_run, tmp_path / "merged_fsdp")
    merge_run(run.path, tmp_path / "merged_one")
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "merged_fsdp" / "model.safetensors"), load_file(tmp_path / "merged_one" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0)


def test_torchrun_sharded_launch_and_resume_after_a_kill(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The documented launch with sharding; killed mid-run, --resume ends where an unbroken sharded run ends."""
    from xgblora_cli.runtime import FAULT_ENV

    def launch(recipe: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                   "-m", "xgblora_cli", "train", str(recipe), "--no-progress", *extra]
        return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                              cwd=ROOT, timeout=600)

    straight = write_recipe(tmp_path / "a.yaml", **tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "a"), train=TRAIN))
    killed = write_recipe(tmp_path / "b.yaml", **tiny_recipe(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "b"), train=TRAIN))
    done = launch(straight)
    assert done.returncode == 0, done.stderr[-3000:]
    assert RunDir(tmp_path / "a").info()["status"] == "complete"
    crashed = launch(killed, env={FAULT_ENV: "5"})
    assert crashed.returncode != 0 and RunDir(tmp_path / "b").load_checkpoint().step == 4
    resumed = launch(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for a, b in zip(Record(tmp_path / "a").load(), Record(tmp_path / "b").load()):
        for name, (u, v) in a.factors.items():
            torch.testing.assert_close(u @ v, b.factors[name][0] @ b.factors[name][1], atol=1e-6, rtol=0)


def test_sharding_needs_several_ranks_and_an_unquantized_base(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(UserError, match="train.sharding: fsdp shards the base over data-parallel ranks; launch with torchrun"):
        start_run(recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, train={"sharding": "fsdp"}), "r.yaml"), "r.yaml", progress=False)
    with pytest.raises(UserError, match="train.sharding: fsdp shards a bf16/fp16/fp32 base; a 4bit base is not supported"):
        recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, quantization="4bit", train={"sharding": "fsdp"}), "r.yaml")
    assert not (tmp_path / "run").exists()
    result = run_cli("train", str(write_recipe(tmp_path / "r.yaml", **tiny_recipe(tmp_path, tiny_model_dir))), "train.sharding=zero3")
    assert result.returncode == 2 and "train.sharding: must be one of none, fsdp, got 'zero3'" in result.stderr
