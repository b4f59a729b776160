"""The prepared sharded GPU check (benchmarks/gpu_check_sharded.py) runs end to end, small, on 2 CPU ranks over gloo: it
is known to work before several GPUs are lent, each rank holds half the base, and it reports the plan per rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.benchmarks.test_gpu_check import TINY
from tests.conftest import ROOT


def test_gpu_check_sharded_runs_small_on_two_cpu_ranks(tmp_path: Path) -> None:
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    (shapes / "config.json").write_text(json.dumps(TINY))
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "gpu_check_sharded", "--device", "cpu", "--nproc", "2", "--shapes", str(shapes),
                           "--seq", "32", "--steps", "2", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ranks"] == 2 and [r["rank"] for r in result["per_rank"]] == [0, 1]
    for rank in result["per_rank"]:
        assert rank["median_step_s"] > 0 and rank["median_merge_s"] > 0
        assert abs(rank["held_weight_bytes"] - rank["total_weight_bytes"] / 2) <= 0.01 * rank["total_weight_bytes"]
        # the plan's weights per GPU: the rank's shard plus what is gathered whole at the peak (the root, one block)
        assert rank["held_weight_bytes"] < rank["planned_components"]["weights"] < rank["total_weight_bytes"]
    assert "sharded_ranks=2" in done.stdout
