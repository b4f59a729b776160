"""The booster record: durable append/load/truncate, and exact application in low precision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from xgblora_cli.common.errors import UserError
from xgblora_cli.core.merge import FactorStack, merged_weight
from xgblora_cli.core.record import BoosterFactors, Record
from xgblora_cli.models.base_weights import BaseWeights


def booster(t: int, scale: float = 1.0) -> BoosterFactors:
    g = torch.Generator().manual_seed(t)
    return BoosterFactors(t, [t % 3], {"w": (scale * torch.randn(8, 1, generator=g), torch.randn(1, 16, generator=g))})


def test_append_load_truncate_roundtrip(tmp_path: Path) -> None:
    record = Record(tmp_path)
    for t in range(3):
        record.append(booster(t))
    loaded = record.load()
    assert [b.index for b in loaded] == [0, 1, 2] and loaded[2].blocks == [2]
    assert torch.equal(loaded[1].factors["w"][0], booster(1).factors["w"][0])
    record.truncate(1)
    assert len(record) == 1 and len(record.load()) == 1
    with pytest.raises(RuntimeError):
        record.append(booster(0))  # not after the last one
    record.append(booster(5))  # a gap: boosters 1-4 were discarded
    assert [b.index for b in record.load()] == [0, 5]


def test_a_missing_booster_file_is_reported_as_corrupt(tmp_path: Path) -> None:
    record = Record(tmp_path)
    record.append(booster(0))
    (record.dir / booster(0).filename).unlink()
    with pytest.raises(UserError, match="booster 0 is missing or out of order"):
        record.load()


def test_exact_merges_stay_within_half_an_ulp_in_bfloat16(tmp_path: Path) -> None:
    """200 tiny, coherent rank-1 updates (each ~1/40 of an ulp, ~5 ulps in all) into a bf16 weight:
    recomputing from the base keeps them; `W += dW` rounds each away."""
    torch.manual_seed(0)
    w0 = torch.randn(64, 128).to(torch.bfloat16)
    save_file({"w": w0}, tmp_path / "model.safetensors")
    merged = FactorStack()
    naive = w0.clone()
    exact = w0.to(torch.float64)
    direction_u, direction_v = torch.randn(64, 1), torch.randn(1, 128)
    for t in range(200):
        u = 2e-4 * (direction_u + 0.3 * torch.randn(64, 1))
        v = direction_v + 0.3 * torch.randn(1, 128)
        merged.add(BoosterFactors(t, [0], {"w": (u, v)}))
        naive += (u @ v).to(torch.bfloat16)
        exact += (u @ v).to(torch.float64)
    cached = merged_weight(BaseWeights(tmp_path), merged, "w").to(torch.bfloat16)
    ulp = torch.pow(2.0, torch.floor(torch.log2(exact.abs())) - 7)  # bf16 has 8 significant bits
    err_exact = ((cached.to(torch.float64) - exact).abs() / ulp).max()
    assert err_exact <= 0.5 + 1e-6
    update = exact - w0.to(torch.float64)
    kept_naive = ((naive.to(torch.float64) - w0.to(torch.float64)) * update).sum() / (update * update).sum()
    kept_exact = ((cached.to(torch.float64) - w0.to(torch.float64)) * update).sum() / (update * update).sum()
    assert kept_naive < 0.2  # plain bf16 accumulation rounds most of the update away
    assert kept_exact > 0.9
