"""Quantized bases (bitsandbytes, run on this CPU): merged boosters stay exact beside the quantized weights, and
`merge` folds the record into the original unquantized weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_recipe
from xgblora_cli.common.errors import UserError
from xgblora_cli.core.merge import FactorStack, merged_weight
from xgblora_cli.core.record import Record
from xgblora_cli.core.rundir import RunDir
from xgblora_cli.core.train import Trainer
from xgblora_cli.export.merged_folder import merge_run
from xgblora_cli.models.base_weights import BaseWeights
from xgblora_cli.models.quantized import bnb_config, is_quantized
from xgblora_cli.recipe_file import recipe_from_dict, recipe_to_yaml
from xgblora_cli.runner import prepare


def packed(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The quantized layers' stored (packed) weights."""
    return {name: m.weight.detach().clone() for name, m in model.named_modules() if is_quantized(m)}


@pytest.fixture(scope="module", params=["4bit", "8bit"])
def quantized_run(request, tmp_path_factory, tiny_model_dir: Path):
    tmp = tmp_path_factory.mktemp(f"q{request.param}")
    recipe = recipe_from_dict(tiny_recipe(tmp, tiny_model_dir, quantization=request.param, layers_per_booster=2,
                                          steps_per_booster=2, train={"max_steps": 6, "learning_rate": 5e-2}), "r.yaml")
    setup = prepare(recipe, "r.yaml")
    before = packed(setup.model)
    run = RunDir(recipe.output_dir)
    run.create(recipe_to_yaml(recipe), {"model_dir": str(tiny_model_dir), "dtype": "float32"}, overwrite=False)
    Trainer(setup, run, show_progress=False).fit()
    return request.param, setup.model, before, run.path


def test_blocks_are_quantized_and_their_stored_weights_never_change(quantized_run) -> None:
    _, model, before, _ = quantized_run
    assert len(before) == 4 * 7  # every target linear of the 4 blocks
    after = packed(model)
    assert all(torch.equal(before[name], after[name]) for name in before), "a merge re-quantized a weight"


def test_merged_boosters_add_exactly_their_update_to_the_quantized_output(quantized_run) -> None:
    _, model, _, run_dir = quantized_run
    boosters = Record(run_dir).load()
    assert len(boosters) == 3
    name = sorted(boosters[-1].factors)[0]
    layer = model.get_submodule(name.rsplit(".", 1)[0])
    expected = sum(b.factors[name][0] @ b.factors[name][1] for b in boosters if name in b.factors)  # (d_out, d_in)
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        with_merged = layer(x)
        hooks, layer._forward_hooks = layer._forward_hooks, {}
        bare = layer(x)
        layer._forward_hooks = hooks
    assert expected.abs().max() > 0
    torch.testing.assert_close(with_merged - bare, x @ expected.T, atol=1e-5, rtol=1e-4)


def test_merge_folds_the_record_into_the_unquantized_original(quantized_run, tmp_path: Path, tiny_model_dir: Path) -> None:
    from safetensors.torch import load_file

    _, _, _, run_dir = quantized_run
    summary = merge_run(run_dir, tmp_path / "merged", dtype="bfloat16")
    out = load_file(tmp_path / "merged" / "model.safetensors")
    exact = FactorStack()
    for booster in Record(run_dir).load():
        exact.add(booster)
    for name in summary["touched_weights"]:
        assert out[name].dtype == torch.bfloat16
        assert torch.equal(out[name], merged_weight(BaseWeights(tiny_model_dir), exact, name).to(torch.bfloat16)), name
    untouched = "model.embed_tokens.weight"
    assert torch.equal(out[untouched], BaseWeights(tiny_model_dir).get(untouched).to(torch.bfloat16))


def test_requantizing_per_booster_would_lose_the_update(smol_dir: Path) -> None:
    """Why the factors stay beside the quantized weight: NF4(W_q + dW) keeps almost none of a rank-1 booster."""
    import bitsandbytes.functional as bnbf

    w = BaseWeights(smol_dir).get("model.layers.3.mlp.up_proj.weight").float()
    q, state = bnbf.quantize_4bit(w, quant_type="nf4")
    deq = bnbf.dequantize_4bit(q, state)
    g = torch.Generator().manual_seed(0)
    update = 1e-2 * w.std() * torch.randn(w.shape[0], 1, generator=g) @ torch.randn(1, w.shape[1], generator=g)
    q2, state2 = bnbf.quantize_4bit(deq + update, quant_type="nf4")
    kept = bnbf.dequantize_4bit(q2, state2) - deq
    assert float((kept * update).sum() / (update * update).sum()) < 0.1  # measured: 1.5% of the update kept
    assert float((kept - update).norm() / update.norm()) > 0.9  # and the error is as large as the update


def test_a_missing_bitsandbytes_is_one_clear_line(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(UserError, match="quantization: '4bit' needs bitsandbytes, which could not be loaded"):
        bnb_config("4bit", torch.float32)
    assert bnb_config("none", torch.float32) is None


def test_a_quantized_run_evaluates_as_trained(quantized_run, tiny_model_dir: Path) -> None:
    """eval of the run directory reloads the base quantized and adds the record the same way."""
    from xgblora_cli.core.opening import open_target

    _, model, _, run_dir = quantized_run
    opened = open_target(str(run_dir), device="cpu")
    reloaded = opened.model
    assert opened.describe()["boosters"] == 3 and any(is_quantized(m) for m in reloaded.modules())
    ids = torch.randint(0, 300, (2, 12))
    model.eval()  # bitsandbytes' 8-bit layers compute differently in train mode
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_bitsandbytes_cpu_repacking_is_turned_off_on_a_loaded_4bit_model() -> None:
    """On an AVX512-BF16 CPU, bitsandbytes' eval forward would rewrite each 4-bit weight into a CPU-only layout in
    place (and fail on an output size not divisible by 32, like this 16)."""
    import bitsandbytes as bnb

    from xgblora_cli.models.quantized import keep_standard_layout

    model = torch.nn.Sequential(bnb.nn.Linear4bit(32, 16, quant_type="nf4"), torch.nn.Linear(16, 4))
    model[0].support_avx512bf16_for_cpu = True  # as on such a CPU
    keep_standard_layout(model)
    assert model[0].support_avx512bf16_for_cpu is False
