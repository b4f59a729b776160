"""What the quality benchmarks share (benchmarks/lib.py): reading back nothing never blanks a table; the CPU's bf16 flags."""

from __future__ import annotations

from pathlib import Path

import pytest

import benchmarks.lib as benchlib


def test_require_runs_stops_on_a_work_folder_without_a_finished_run_and_names_the_doc(tmp_path: Path) -> None:
    work, doc = tmp_path / "runs", tmp_path / "benchmarks.md"
    (work / "sst2" / "lora_lr0.001_s0").mkdir(parents=True)  # started, not finished: no bench_wall_s.txt
    with pytest.raises(SystemExit, match=f"no finished run in {work}.*{doc} is left as it is"):
        benchlib.require_runs(work, doc)
    (work / "sst2" / "lora_lr0.001_s0" / "bench_wall_s.txt").write_text("61.0\n")
    benchlib.require_runs(work, doc)  # one finished run: the table can be read back


def test_cpu_bf16_flags_reads_the_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert benchlib.cpu_bf16_flags(cpuinfo) == ["avx512_bf16"]
    cpuinfo.write_text("flags\t\t: fpu avx2\n")
    assert benchlib.cpu_bf16_flags(cpuinfo) == []
    assert benchlib.cpu_bf16_flags(tmp_path / "missing") == []


def test_ratio_rounds_repeat_until_the_spread_is_known() -> None:
    steady = benchlib.ratio_rounds(lambda r: 2.0 + 0.01 * (r % 2), min_rounds=5, max_rounds=15)
    assert steady.rounds == 5 and 2.0 <= steady.median <= 2.01 and (steady.low, steady.high) == (2.0, 2.01)
    noisy_values = [1.0, 3.0, 0.9, 2.5, 1.1, 2.8, 1.0, 2.9, 1.2, 3.1, 0.8, 2.7]
    noisy = benchlib.ratio_rounds(lambda r: noisy_values[r], min_rounds=5, max_rounds=12)
    assert noisy.rounds == 12 and noisy.low == 0.8 and noisy.high == 3.1
    assert "range 0.80-3.10 over 12 rounds" in noisy.text()
