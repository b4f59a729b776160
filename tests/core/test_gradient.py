"""The weight gradient read from flows equals autograd's; its top singular vectors and norms are right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TRAIN_DATA
from xgblora_cli.core.gradient import block_scores, capture, frobenius_sq, top_singular
from xgblora_cli.core.loss import causal_lm_loss
from xgblora_cli.data.batches import BatchStream
from xgblora_cli.data.formats import load_records
from xgblora_cli.data.prompts import PromptFormat
from xgblora_cli.models.loading import find_blocks, load_model, load_tokenizer


def model_and_batches(model_dir: Path, count: int = 2, rows: int = 3, length: int = 64):
    model = load_model(model_dir, "float32")
    tokenizer = load_tokenizer(model_dir)
    prompt = PromptFormat.resolve(tokenizer, "auto", length)
    stream = BatchStream(tokenizer, load_records(str(TRAIN_DATA))[:40], rows, prompt, 0)
    return model, [stream.batch(i) for i in range(count)]


def autograd_gradients(model, names: list[str], batches) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    for name in names:
        params[name].requires_grad_(True)
    for batch in batches:
        (causal_lm_loss(model, batch)[0] / len(batches)).backward()
    out = {name: params[name].grad.clone() for name in names}
    for name in names:
        params[name].grad = None
        params[name].requires_grad_(False)
    return out


def test_flows_give_autograds_weight_gradient(tiny_model_dir: Path) -> None:
    model, batches = model_and_batches(tiny_model_dir)
    blocks = find_blocks(model)
    layers = {"model.layers.2.self_attn.q_proj.weight": blocks[2].self_attn.q_proj,
              "model.layers.3.mlp.down_proj.weight": blocks[3].mlp.down_proj}
    flows = capture(layers, blocks[2], batches, lambda b: causal_lm_loss(model, b)[0] / len(batches))
    expected = autograd_gradients(model, list(layers), batches)
    for name, flow in flows.items():
        assert len(flow.inputs) == len(batches)
        torch.testing.assert_close(flow.matrix(), expected[name], rtol=1e-4, atol=1e-6)
        assert all(p.grad is None for p in model.parameters())  # no parameter gradient was formed
        # the power iteration finds the top singular pair, and the squared norm matches
        u, s, vh = torch.linalg.svd(expected[name])
        sigma, top_u, top_v = top_singular(flow, 1, torch.Generator().manual_seed(0), iters=30)
        assert abs(float(sigma[0]) - float(s[0])) / float(s[0]) < 1e-3
        assert abs(float(top_v[0] @ vh[0])) > 0.999 and abs(float(top_u[:, 0] @ u[:, 0])) > 0.999
        assert abs(frobenius_sq(flow) - float(expected[name].square().sum())) < 1e-4 * float(expected[name].square().sum())


@pytest.mark.parametrize("rows,length", [(3, 64), (1, 24)])  # n^2 above / below d_in * d_out: explicit / Gram
def test_block_scores_are_the_blocks_squared_gradient_norms(tiny_model_dir: Path, rows: int, length: int) -> None:
    model, batches = model_and_batches(tiny_model_dir, count=1, rows=rows, length=length)
    blocks = find_blocks(model)
    layers = {}
    for i, block in enumerate(blocks):
        for attr in ("q_proj", "v_proj"):
            layers[f"model.layers.{i}.self_attn.{attr}.weight"] = (i, getattr(block.self_attn, attr))
    for attr in ("gate_proj", "down_proj"):  # wide layers: scored through the explicit gradient, not the Gram
        layers[f"model.layers.1.mlp.{attr}.weight"] = (1, getattr(blocks[1].mlp, attr))
    scores = block_scores(layers, blocks[0], batches, lambda b: causal_lm_loss(model, b)[0])
    grads = autograd_gradients(model, list(layers), batches)
    for i in range(len(blocks)):
        expected = sum(float(g.square().sum()) for name, g in grads.items() if layers[name][0] == i)
        assert abs(scores[i] - expected) <= 1e-4 * expected, (i, scores[i], expected)


def test_a_non_finite_gradient_gives_no_direction() -> None:
    """A diverged step's flow (inf in Gy) gives sigma 0, so the booster keeps its random V and is then discarded."""
    from xgblora_cli.core.gradient import LayerFlow

    flow = LayerFlow((3, 5))
    flow.add(torch.randn(4, 5), torch.full((4, 3), float("inf")))
    sigma, u, v = top_singular(flow, 1, torch.Generator().manual_seed(0))
    assert float(sigma[0]) == 0 and u.shape == (3, 1) and v.shape == (1, 5)
    finite = LayerFlow((3, 5))
    finite.add(torch.randn(4, 5), torch.randn(4, 3))
    assert float(top_singular(finite, 1, torch.Generator().manual_seed(0))[0][0]) > 0
