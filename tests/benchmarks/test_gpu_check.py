"""The prepared GPU check (benchmarks/gpu_check.py) runs end to end, small, on the CPU: it is known to work before a GPU
is lent, and reports each method's step time and the planner's estimate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 6, "vocab_size": 300, "model_type": "llama", "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def test_gpu_check_runs_small_on_the_cpu(tmp_path: Path) -> None:
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    (shapes / "config.json").write_text(json.dumps(TINY))
    out = tmp_path / "result.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "gpu_check", "--device", "cpu", "--shapes", str(shapes), "--seq", "32",
                           "--steps", "2", "--skip-merge", "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    xgb, lora = result["methods"]["xgblora"], result["methods"]["lora r=32"]
    assert xgb["lowest_blocks"][0] == 0 and len(xgb["step_s"]) == 2  # the first timed booster reaches block 0
    assert lora["lowest_blocks"] == [0, 0]
    assert xgb["planned_peak_bytes"] < lora["planned_peak_bytes"]
    assert "step_ratio_xgblora_vs_lora32=" in done.stdout
