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
