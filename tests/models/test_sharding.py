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
from tests.test_distributed import free_port, leave_rank
from xgblora_cli.common.errors import UserError
from xgblora_cli.core.record import Record
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.export.merged_folder import merge_run
from xgblora_cli.models.sharding import shard_rows
from xgblora_cli.recipe_file import recipe_from_dict
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
    from xgblora_cli.common.runtime import init_from_env

    ranks = init_from_env("cpu")
    setup, _ = train_in_memory(recipe_dict, ranks)
    shards = {n: p.to_local().clone() for n, p in setup.model.named_parameters()}
    full = {n: p.full_tensor().clone() for n, p in setup.model.named_parameters()}
    torch.save({"shards": shards, "full": full}, Path(out) / f"rank{rank}.pt")
    leave_rank(ranks)


def test_two_sharded_ranks_equal_one_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    recipe_dict = tiny_recipe(tmp_path / "fsdp", tiny_model_dir, device="cpu", layers_per_booster=2, steps_per_booster=3, train=TRAIN)
    (tmp_path / "fsdp").mkdir()
    mp.spawn(_worker, args=(2, free_port(), recipe_dict, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")

    setup, run = train_in_memory(tiny_recipe(tmp_path / "one", tiny_model_dir, device="cpu", layers_per_booster=2, steps_per_booster=3,
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


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_torchrun_sharded_launch_and_resume_after_a_kill(quantization: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The documented launch with sharding (bf16/fp32 or 4-bit NF4 base); killed mid-run, --resume ends where an
    unbroken sharded run ends (on a 4-bit base the resumed run puts the merged boosters back beside the codes)."""
    from xgblora_cli.common.runtime import FAULT_ENV

    def launch(recipe: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
                   "-m", "xgblora_cli", "train", str(recipe), "--no-progress", *extra]
        return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                              cwd=ROOT, timeout=600)

    fields = dict(train=TRAIN, quantization=quantization)
    straight = write_recipe(tmp_path / "a.yaml", **tiny_recipe(tmp_path, tiny_model_dir, device="cpu", output_dir=str(tmp_path / "a"), **fields))
    killed = write_recipe(tmp_path / "b.yaml", **tiny_recipe(tmp_path, tiny_model_dir, device="cpu", output_dir=str(tmp_path / "b"), **fields))
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


def _nf4_worker(rank: int, world: int, port: int, recipe_dict: dict, out: str) -> None:
    """One rank of a sharded 4-bit run: train, then save which layers hold NF4 codes and this rank's share of them."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from xgblora_cli.common.runtime import init_from_env
    from xgblora_cli.models.quantized import is_quantized

    ranks = init_from_env("cpu")
    setup, _ = train_in_memory(recipe_dict, ranks)
    codes = {name: (module.weight.to_local().quantized_data.numel(), module.weight.shape.numel())
             for name, module in setup.model.named_modules() if is_quantized(module)}
    torch.save(codes, Path(out) / f"codes{rank}.pt")
    leave_rank(ranks)


def _dequantized_copy(model_dir: Path, out: Path, world: int) -> tuple[Path, set[str]]:
    """``model_dir`` with every block weight that a 4-bit sharded run quantizes replaced by the values its NF4 codes
    stand for: the base a one-process run must see to equal the sharded 4-bit one. Returns the folder and names."""
    import shutil

    from safetensors.torch import load_file, save_file

    from xgblora_cli.models.nf4 import dequantized, shardable, to_nf4

    shutil.copytree(model_dir, out)
    tensors = load_file(model_dir / "model.safetensors")
    names = {n for n, t in tensors.items() if ".layers." in n and n.endswith("proj.weight") and shardable(tuple(t.shape), world)}
    for name in names:
        tensors[name] = dequantized(to_nf4(tensors[name], world)).contiguous()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out, names


def test_a_sharded_4bit_base_trains_like_one_process_on_its_dequantized_values(tmp_path: Path) -> None:
    """quantization: 4bit with sharding: fsdp on 2 gloo ranks (torchao NF4 codes, half of them a rank): the record
    equals a one-process run on a base holding what the codes stand for (each update within 0.1% of its norm), merged boosters included
    (they stay beside the codes as factors)."""
    from tests.conftest import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "wide", hidden=64)
    plain_dir, names = _dequantized_copy(model_dir, tmp_path / "dequantized", 2)
    assert len(names) == 4 * 7  # every linear layer of the 4 blocks
    recipe = tiny_recipe(tmp_path / "nf4", model_dir, device="cpu", layers_per_booster=2, steps_per_booster=3, quantization="4bit", train=TRAIN)
    (tmp_path / "nf4").mkdir()
    mp.spawn(_nf4_worker, args=(2, free_port(), recipe, str(tmp_path)), nprocs=2, join=True)
    codes = [torch.load(tmp_path / f"codes{rank}.pt") for rank in (0, 1)]
    assert set(codes[0]) == {name.removesuffix(".weight") for name in names} == set(codes[1])
    for rank in (0, 1):
        assert all(local == numel // 2 // 2 for local, numel in codes[rank].values())  # 2 codes a byte, half the rows

    _, one = train_in_memory(tiny_recipe(tmp_path / "one", plain_dir, device="cpu", layers_per_booster=2, steps_per_booster=3,
                                         train={**TRAIN, "sharding": "none"}))
    sharded, single = Record(tmp_path / "nf4" / "run").load(), Record(one.path).load()
    assert len(sharded) == len(single) == 2 and any(name in names for b in sharded for name in b.factors)
    for a, b in zip(sharded, single):
        assert a.blocks == b.blocks and sorted(a.factors) == sorted(b.factors)
        for name, (u, v) in a.factors.items():
            # AdamW amplifies fp32 sums in another order near 0; how much depends on the CPU's kernels (2.1e-3 of
            # the norm seen on an AVX512 machine, under 1e-3 on AVX2 ones): a wrong dequantization is off by O(1)
            expected = b.factors[name][0] @ b.factors[name][1]
            assert (u @ v - expected).norm() <= 5e-3 * expected.norm(), (a.index, name)


def test_nf4_shards_hold_whole_blocks_and_scale_groups() -> None:
    from xgblora_cli.models.nf4 import scaler_block, shardable, to_nf4

    assert shardable((576, 576), 2) and shardable((192, 576), 4) and not shardable((7, 64), 2) and not shardable((2, 48), 2)
    assert scaler_block(4096) == 256 and scaler_block(2592) == 216 and scaler_block(7) == 7 and scaler_block(257) == 1
    weight = torch.randn(192, 576) * 0.02  # SmolLM2's k_proj: 1,728 blocks of 64, 864 a rank on 2
    codes = to_nf4(weight, 2)
    assert codes.quantization_factor.numel() % 2 == 0 and codes.quantized_scalers.numel() == 1728
    assert (codes.get_original_weight() - weight).abs().mean() < 0.12 * weight.abs().mean()  # NF4: about 9% here


def test_sharding_needs_several_ranks_and_a_base_it_can_shard(tmp_path: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(UserError, match="train.sharding: fsdp shards the base over data-parallel ranks; launch with torchrun"):
        start_run(recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, train={"sharding": "fsdp"}), "r.yaml"), "r.yaml", progress=False)
    with pytest.raises(UserError, match="train.sharding: fsdp shards a bf16/fp16/fp32 or 4bit base; a 8bit base is not supported"):
        recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, quantization="8bit", train={"sharding": "fsdp"}), "r.yaml")
    assert not (tmp_path / "run").exists()
    result = run_cli("train", str(write_recipe(tmp_path / "r.yaml", **tiny_recipe(tmp_path, tiny_model_dir))), "train.sharding=zero3")
    assert result.returncode == 2 and "train.sharding: must be one of none, fsdp, got 'zero3'" in result.stderr
