"""What one merge costs at LLaMA3-8B shapes as boosters pile up (T = 1, 100, 1,000), and what merged boosters cost a
quantized base, whose merged factors stay beside each layer as a forward hook.

A synthetic base of k=4 blocks with LLaMA3-8B's shapes (``recipes/shapes/llama3-8b``: 7 projections per block,
872M bf16 parameters, random values, no download) is written once as safetensors; the weights are bf16 on the
device (``--device``: CUDA where present). After T recorded boosters each weight carries about
``R = T k / L`` stacked rank-1 factors (L = 32 blocks), and one merge of a k=4 booster recomputes the 28 weights
it touched with the trainer's own ``merge.write_merged``. The T values are timed in interleaved rounds (a round: one
merge at each T, the order alternating), and ``growth`` (the largest T's merge over the smallest's, one ratio per
round) is repeated until its spread is known (``benchmarks.lib.ratio_rounds``, at least ``--rounds``); the paper's
booster (50 steps of 0.62 s on a GPU) is the yardstick.

The quantized part: at T = 1,000 every weight of every block holds R = 125 stacked fp32 factors; the script
prints their memory over the 32 blocks, and the forward time of one block's seven projections on 512 tokens
with such a hook against without it (dense stand-ins on the same device, as the hook's cost does not depend on
how the base layer stores its weight), in interleaved rounds the same way. Ends with ``growth=X growth_range=LO-HI``
and ``hook_forward_ratio=Y hook_forward_range=LO-HI``.

    .venv/bin/python -m benchmarks merge [--device auto] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from benchmarks.lib import Ratio, interleaved, ratio_rounds, timed
from xgblora_cli.common.runtime import pick_device
from xgblora_cli.core.merge import FactorStack, write_merged
from xgblora_cli.core.record import BoosterFactors
from xgblora_cli.models.base_weights import BaseWeights
from xgblora_cli.models.quantized import set_merged

ROOT = Path(__file__).resolve().parent.parent
PAPER_BOOSTER_S = 50 * 0.62
PROJECTIONS = {"self_attn.q_proj": ("h", "h"), "self_attn.k_proj": ("kv", "h"), "self_attn.v_proj": ("kv", "h"),
               "self_attn.o_proj": ("h", "h"), "mlp.gate_proj": ("m", "h"), "mlp.up_proj": ("m", "h"), "mlp.down_proj": ("h", "m")}


def shapes(config: dict, blocks: int) -> dict[str, tuple[int, int]]:
    """``{weight name: (d_out, d_in)}`` of the first ``blocks`` blocks."""
    dims = {"h": config["hidden_size"], "m": config["intermediate_size"],
            "kv": config["num_key_value_heads"] * config["hidden_size"] // config["num_attention_heads"]}
    return {f"model.layers.{b}.{proj}.weight": (dims[out], dims[inp]) for b in range(blocks) for proj, (out, inp) in PROJECTIONS.items()}


def write_base(folder: Path, weights: dict[str, tuple[int, int]]) -> None:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    save_file({name: (0.02 * torch.randn(shape, generator=generator)).to(torch.bfloat16) for name, shape in weights.items()},
              folder / "model.safetensors")


def holder(weights: dict[str, tuple[int, int]], device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A module tree whose parameters carry the base's names (what write_merged writes into)."""
    root = nn.Module()
    for name, (d_out, d_in) in weights.items():
        parent = root
        parts = name.split(".")[:-1]
        for part in parts[:-1]:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(parts[-1], nn.Linear(d_in, d_out, bias=False, device="meta", dtype=dtype))
    return root.to_empty(device=device).requires_grad_(False)


def stack_at(weights: dict[str, tuple[int, int]], rank: int) -> FactorStack:
    """Every weight with ``rank`` recorded rank-1 factors, as after T = rank * L / k boosters."""
    generator = torch.Generator().manual_seed(1)
    stack = FactorStack()
    for t in range(rank):
        stack.add(BoosterFactors(t, [], {name: (1e-4 * torch.randn(d_out, 1, generator=generator), torch.randn(1, d_in, generator=generator))
                                        for name, (d_out, d_in) in weights.items()}))
    return stack


def merge_growth(model: nn.Module, base: BaseWeights, stacks: dict[int, FactorStack], names: list[str], device: torch.device,
                 rounds: int) -> tuple[dict[int, list[float]], Ratio]:
    """Seconds of one merge at each T (by round) and the growth ratio (largest T over smallest, per round)."""
    times: dict[int, list[float]] = {t: [] for t in stacks}
    first, last = min(stacks), max(stacks)

    def one_round(number: int) -> float:
        for t in interleaved(sorted(stacks), number):
            times[t].append(timed(lambda t=t: write_merged(model, base, stacks[t], names), device))
        print("  round " + str(number + 1) + ": " + "  ".join(f"T={t} {s[-1]:.3f} s" for t, s in times.items()), flush=True)
        return times[last][-1] / times[first][-1]

    return times, ratio_rounds(one_round, min_rounds=rounds, max_rounds=max(rounds, 8))


def hook_cost(config: dict, rank: int, device: torch.device, tokens: int = 512) -> tuple[float, Ratio]:
    """(GiB of stacked fp32 factors over all blocks at ``rank``, forward-time ratio of one block's projections
    with the merged-factor hook against without, per interleaved round)."""
    weights = shapes(config, 1)
    per_block = sum(rank * (d_out + d_in) * 4 for d_out, d_in in weights.values())
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(2)
    sides = {side: {name: nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype).requires_grad_(False)
                    for name, (d_out, d_in) in weights.items()} for side in ("bare", "hooked")}
    for (d_out, d_in), layer in zip(weights.values(), sides["hooked"].values()):
        set_merged(layer, 1e-4 * torch.randn(d_out, rank, generator=generator), torch.randn(rank, d_in, generator=generator))
    x = {name: torch.randn(tokens, d_in, device=device, dtype=dtype) for name, (_, d_in) in weights.items()}

    def forward(side: str) -> None:
        with torch.no_grad():
            for name, layer in sides[side].items():
                layer(x[name])

    forward("bare"), forward("hooked")  # warm-up

    def one_round(number: int) -> float:
        seconds = {side: timed(lambda side=side: forward(side), device) for side in interleaved(["bare", "hooked"], number)}
        return seconds["hooked"] / seconds["bare"]

    return per_block * config["num_hidden_layers"] / 2**30, ratio_rounds(one_round, min_rounds=5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=3, help="rounds at least (up to 8 while the spread is wide)")
    p.add_argument("--boosters", default="1,100,1000", help="T values")
    p.add_argument("--k", type=int, default=4)
    args = p.parse_args()
    device = pick_device(args.device)
    config = json.loads((ROOT / "recipes" / "shapes" / "llama3-8b" / "config.json").read_text())
    weights = shapes(config, args.k)
    layers = config["num_hidden_layers"]
    print(f"{len(weights)} weights, {sum(a * b for a, b in weights.values()) / 1e6:.0f}M bf16 parameters, merged on {device}", flush=True)
    ranks = {int(t): max(1, round(int(t) * args.k / layers)) for t in args.boosters.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        write_base(Path(tmp), weights)
        base = BaseWeights(Path(tmp))
        model = holder(weights, device, torch.bfloat16)
        times, growth = merge_growth(model, base, {t: stack_at(weights, r) for t, r in ranks.items()}, list(weights), device, args.rounds)
    for boosters, rank in ranks.items():
        median = statistics.median(times[boosters])
        print(f"T={boosters:>5}  R={rank:>4} factors per weight  merge {median:.3f} s (median of {len(times[boosters])})  "
              f"({100 * median / PAPER_BOOSTER_S:.2f}% of a {PAPER_BOOSTER_S:.0f} s booster)", flush=True)
    last = max(ranks)
    print(f"growth, T={last} over T={min(ranks)} per round: {growth.text(2)}")
    print(" ".join(f"merge_s_T{t}={statistics.median(s):.3f}" for t, s in times.items())
          + f" growth={growth.median:.2f} growth_range={growth.low:.2f}-{growth.high:.2f}"
          + f" booster_fraction_T{last}={statistics.median(times[last]) / PAPER_BOOSTER_S:.4f}")
    gib, ratio = hook_cost(config, ranks[last], device)
    print(f"quantized base at T={last}: merged factors {gib:.2f} GiB over {layers} blocks (R={ranks[last]}), "
          f"block forward with the hook over without, per round: {ratio.text(2)}")
    print(f"hook_gib_T{last}={gib:.2f} hook_forward_ratio={ratio.median:.2f} hook_forward_range={ratio.low:.2f}-{ratio.high:.2f}")


if __name__ == "__main__":
    main()
