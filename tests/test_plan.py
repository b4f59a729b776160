"""`xgblora plan`: the estimate against measured peak memory, the LLaMA3-8B recipes, and train's refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, tiny_recipe
from xgblora_cli.common.errors import UserError
from xgblora_cli.recipe_file import recipe_from_dict
from xgblora_cli.runner import start_run

SHAPE = ROOT / "recipes" / "shapes" / "llama3-8b"
GIB = 2**30


@pytest.mark.parametrize("size", ["tiny-256", "tiny-512", "smollm2-b4s256"])
def test_estimate_is_within_15_percent_of_measured_peak(size: str) -> None:
    """Peak = the training process's ru_maxrss minus its RSS right after the imports (see benchmarks/plan_check.py):
    tiny random LLaMAs (one with a rank-8 booster over all blocks) and the real SmolLM2, batches filled to max_seq_len."""
    done = subprocess.run([sys.executable, "-m", "benchmarks", "plan_check", "--only", size], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith(f"{size}:"))
    ratio = float(line.split("ratio ")[1].split()[0])
    assert 0.85 <= ratio <= 1.15, line


def plan_json(recipe: Path, *extra: str) -> dict:
    result = run_cli("plan", str(recipe), f"model={SHAPE}", *extra, "--gpu-memory", "24GiB", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", ["mmlu_llama3", "commonsense_llama3"])
def test_llama3_recipes_fit_24gib_and_lora_rank_32_does_not(name: str) -> None:
    recipe = ROOT / "recipes" / f"{name}.yaml"
    shipped = plan_json(recipe)
    assert shipped["fits"] and shipped["peak_bytes"] < 24 * GIB
    assert set(shipped["components"]) >= {"weights", "adapters", "activations", "loss", "record"}
    assert shipped["inputs"]["shape"]["vocab"] == 128256 and shipped["inputs"]["plan"]["rank"] == 2
    lora = plan_json(recipe, "method=lora", "rank=32", "layers_per_booster=all", "steps_per_booster=null")
    assert lora["peak_bytes"] > 23 * GIB and lora["peak_bytes"] > shipped["peak_bytes"] + 3 * GIB


def test_quantized_base_and_checkpointing_shrink_their_components() -> None:
    recipe = ROOT / "recipes" / "mmlu_llama3.yaml"
    plain = plan_json(recipe)
    nf4 = plan_json(recipe, "quantization=4bit")
    ckpt = plan_json(recipe, "train.gradient_checkpointing=true")
    assert nf4["components"]["weights"] < 0.4 * plain["components"]["weights"]  # embeddings and head stay bf16
    assert ckpt["components"]["activations"] < 0.25 * plain["components"]["activations"]


def test_train_refuses_a_run_that_cannot_fit(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr("xgblora_cli.runner.device_memory", lambda device: 64 * 2**20)  # a 64 MiB device
    recipe = recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir, train={"batch_size": 64, "max_seq_len": 512}), "r.yaml")
    with pytest.raises(UserError, match=r"r.yaml: the memory plan does not fit (cpu|cuda:\d+): .* GiB needed \(.*\) of 0.1 GiB; .* --no-memory-check"):
        start_run(recipe, "r.yaml", progress=False)
    assert not (tmp_path / "run").exists()
    start_run(recipe_from_dict(tiny_recipe(tmp_path, tiny_model_dir), "r.yaml"), "r.yaml", progress=False, memory_check=False)
    assert (tmp_path / "run" / "run.json").is_file()


def test_planning_a_hub_model_reads_only_its_config_and_a_hub_failure_is_one_line(monkeypatch) -> None:
    """The planner promises to read config.json only: when the hub cannot give it, it says so instead of falling
    back to downloading the whole model (which it used to do, swallowing the error)."""
    import huggingface_hub

    from xgblora_cli import plan

    def no_hub(*args, **kwargs):
        raise ConnectionError("offline")

    def whole_model(*args, **kwargs):
        raise AssertionError("the planner must not fetch the weights")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(plan, "resolve_model_dir", whole_model)
    recipe = recipe_from_dict({"model": "org/model", "dataset": "d.json", "output_dir": "x"}, "r.yaml")
    with pytest.raises(UserError, match=r"model 'org/model': not a local folder, .* could not provide its config.json: offline"):
        plan.config_dir(recipe)


def test_sharded_plans_hold_a_share_of_the_blocks_per_gpu() -> None:
    """--gpus N with train.sharding: fsdp: each GPU holds 1/N of the blocks, the root whole and two blocks gathered;
    replicated, each GPU holds everything (and half the batch's activations either way)."""
    recipe = ROOT / "recipes" / "mmlu_llama3.yaml"
    one = plan_json(recipe)
    replicated = plan_json(recipe, "--gpus", "2")
    sharded = plan_json(recipe, "--gpus", "2", "train.sharding=fsdp")
    shape = one["inputs"]["shape"]
    blocks, root = (shape["params"] - shape["root_params"]) * 2, shape["root_params"] * 2  # bf16 bytes
    assert replicated["components"]["weights"] == one["components"]["weights"]
    assert sharded["components"]["weights"] == pytest.approx(blocks / 2 + root + 2 * blocks / shape["layers"] / 2, rel=1e-6)
    assert sharded["components"]["activations"] == pytest.approx(one["components"]["activations"] / 2, rel=1e-6)
    assert sharded["inputs"]["ranks"] == 2 and sharded["inputs"]["sharding"] == "fsdp"
    result = run_cli("plan", str(recipe), f"model={SHAPE}", "--gpus", "3", "--gpu-memory", "24GiB")
    assert result.returncode == 2 and "--gpus: train.batch_size (2) must divide by the number of GPUs, got 3" in result.stderr


def test_a_sharded_4bit_base_plans_its_codes_per_gpu_and_puts_70b_on_4_x_24_gib() -> None:
    """quantization: 4bit with sharding: the blocks' linear layers at 4.127 bits, 1/N of them per GPU, plus one
    dequantized linear layer; LLaMA3-70B fits 4 x 24 GiB that way and not in bf16."""
    recipe = ROOT / "recipes" / "llama3_70b_4bit_fsdp.yaml"
    model = f"model={ROOT / 'recipes' / 'shapes' / 'llama3-70b'}"
    def planned(*extra: str) -> dict:
        result = run_cli("plan", str(recipe), model, *extra, "--gpus", "4", "--gpu-memory", "24GiB", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    nf4, bf16 = planned(), planned("quantization=none")
    s = nf4["inputs"]["shape"]
    linear, other = s["block_linear_params"], s["params"] - s["root_params"] - s["block_linear_params"]
    block = linear * 4.127 / 8 + other * 2
    expected = block / 4 + s["root_params"] * 2 + 2 * block / s["layers"] * 3 / 4 + s["hidden"] * s["intermediate"] * 2
    assert nf4["components"]["weights"] == pytest.approx(expected, rel=1e-6)
    assert nf4["fits"] and not bf16["fits"] and nf4["peak_bytes"] < 24 * 2**30 < bf16["peak_bytes"]


def test_a_booster_started_from_the_gradient_is_planned_with_its_probe() -> None:
    """The probe (booster_init: gradient, block_schedule: gradient) runs between steps: what it holds beyond a
    step's activations and adapters is the plan's `probe`; a deep probe (many micro-batches) shows there."""
    recipe = ROOT / "recipes" / "mmlu_llama3.yaml"
    plain = plan_json(recipe)
    assert plain["components"]["probe"] == 0
    shallow = plan_json(recipe, "booster_init=gradient")
    deep = plan_json(recipe, "booster_init=gradient", "init_batches=4", "block_schedule=gradient")
    assert shallow["components"]["probe"] == 0  # one micro-batch's flows of 4 blocks: less than the adapters' activations
    assert deep["components"]["probe"] > GIB and deep["peak_bytes"] == plain["peak_bytes"] + deep["components"]["probe"]


def test_the_probes_flows_count_gy_beyond_a_blocks_activations_and_earlier_micro_batches_whole() -> None:
    """A booster over every block started along the gradient (no checkpointing): the X of every block is held on
    top of the saved activations, the last micro-batch's Gy only where it exceeds a block's activations (it arrives
    as the blocks above free theirs), an earlier micro-batch's flows whole."""
    from xgblora_cli.plan import Shape, flow_bytes, frozen_block_bytes, probe_bytes
    from xgblora_cli.recipe import BoosterPlan

    s = Shape(layers=8, hidden=512, intermediate=1536, heads=8, kv_width=256, vocab=16000, params=0, root_params=0,
              block_linear_params=0, block_linear_rows=0)
    tokens, b = 2048, 4
    x, gy = flow_bytes(s, b)
    block = frozen_block_bytes(s, b)
    assert gy < block  # this shape: Gy fits inside what the freed blocks held

    def plan(init: str, batches: int = 1) -> BoosterPlan:
        return BoosterPlan(8, 16.0, 8, 1, 3, 8, booster_init=init, init_batches=batches)

    assert probe_bytes(plan("random"), s, b, tokens, False) == 0  # no probe at all
    one = probe_bytes(plan("gradient"), s, b, tokens, False)
    assert one == int(tokens * (8 * block + 8 * x))
    two = probe_bytes(plan("gradient", 2), s, b, tokens, False)
    assert two - one == pytest.approx(tokens * 8 * (x + gy), abs=2)
    checkpointed = probe_bytes(plan("gradient"), s, b, tokens, True)
    assert checkpointed == int(tokens * (8 * s.hidden * b + block + 8 * (x + gy)))  # every flow whole
