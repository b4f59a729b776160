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


def test_the_end_to_end_gpu_row_runs_small_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_train.py: a random-weight model folder, xgblora (its defaults) and lora through `xgblora
    train`, packed steps; each row's loss before and after and its tokens/s."""
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    (shapes / "config.json").write_text(json.dumps({**TINY, "vocab_size": 4000, "max_position_embeddings": 256}))
    out = tmp_path / "train.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "gpu_train", "--device", "cpu", "--shapes", str(shapes),
                           "--steps", "4", "--kappa", "2", "--seq", "128", "--work", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())["methods"]
    assert set(result) == {"xgblora", "lora"} and all(r["tokens_per_s"] > 0 for r in result.values())
    import yaml

    from xgblora_cli.recipe import PRESETS

    shipped = yaml.safe_load((ROOT / "recipes" / "mmlu_llama3.yaml").read_text())["train"]["learning_rate"]
    assert (result["xgblora"]["lr"], result["lora"]["lr"]) == (shipped, PRESETS["lora"].learning_rate)  # each its shipped rate
    assert "final_loss_xgblora=" in done.stdout
