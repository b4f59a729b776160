"""The sensitivity benchmark's rows (scripts/bench_sensitivity.py): xgblora's rate grid, then the cola and lora
presets' grids (``--preset-grids``), then the variants at ``--lr``, each row trained with its own method."""

from __future__ import annotations

import argparse

import pytest

from tests.scripts import load_script

load_script("benchlib")  # imported by the script by its bare name
load_script("bench_quality")
bench_sensitivity = load_script("bench_sensitivity")


def test_preset_grid_parses_a_method_and_its_rates_and_names_what_is_allowed() -> None:
    assert bench_sensitivity.preset_grid("cola=1e-3,3e-3") == ("cola", [1e-3, 3e-3])
    with pytest.raises(argparse.ArgumentTypeError, match="expected cola=LR,LR or lora=LR,LR"):
        bench_sensitivity.preset_grid("xgblora=1e-2")
    with pytest.raises(argparse.ArgumentTypeError, match="the rates must be numbers"):
        bench_sensitivity.preset_grid("lora=fast")


def test_rows_keep_their_method_and_order() -> None:
    args = argparse.Namespace(grid=[1e-2], preset_grids=[("lora", [1e-3, 3e-3]), ("cola", [1e-3])], lr=1e-2, variants=["k8"])
    rows = bench_sensitivity.settings(args)
    assert [(label, method, lr) for label, method, lr, _ in rows] == [
        ("xgblora lr 0.01", "xgblora", 1e-2), ("lora lr 0.001", "lora", 1e-3), ("lora lr 0.003", "lora", 3e-3),
        ("cola lr 0.001", "cola", 1e-3), ("k = 8, lr 0.01", "xgblora", 1e-2)]
    assert rows[-1][3] == {"layers_per_booster": 8} and rows[0][3] is None
