"""The one renderer: every generated section of the docs is what its results file renders, byte for byte."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_every_section_matches_its_recorded_results() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "render", "--check"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every section matches its results" in done.stdout


def test_every_benchmark_module_is_listed_and_runs_by_name() -> None:
    listed = subprocess.run([sys.executable, "-m", "benchmarks"], capture_output=True, text=True, cwd=ROOT).stdout
    for name in ("quality", "boosters", "diagnose", "render", "chat_speed", "speed", "packing"):
        assert f"  {name} " in listed, listed
    unknown = subprocess.run([sys.executable, "-m", "benchmarks", "nope"], capture_output=True, text=True, cwd=ROOT)
    assert unknown.returncode == 2 and "no benchmark 'nope'" in unknown.stderr
