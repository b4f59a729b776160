"""The output-head loss alone: xgblora's chunked head loss against PyTorch's standard path, same inputs.

Standard path: full logits ``hidden @ W^T`` for every row, ``F.cross_entropy`` and autograd's backward to the
hidden states (what PEFT and the Hugging Face models do). Ours: ``loss.head_loss_sum`` (chunks of 1,024 rows,
one ``exp`` pass, the hidden-state gradient formed in forward). Both compute the summed loss and the gradient
for ``hidden``; the script checks they agree, then times them in interleaved rounds (a round: one call of each,
the order alternating; the agreement check warms both up), repeated until the spread of the per-round ratio is known
(``benchmarks.lib.ratio_rounds``), and prints median seconds and ``loss_time_ratio_vs_standard=X`` with
``loss_time_ratio_range=LO-HI``.

    .venv/bin/python -m benchmarks loss [--rows 2040] [--hidden 576] [--vocab 49152] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.lib import interleaved, ratio_rounds, timed
from xgblora_cli.core.loss import head_loss_sum


def standard(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = hidden.detach().requires_grad_(True)
    loss = F.cross_entropy(head(h).float(), targets, reduction="sum")
    loss.backward()
    return loss.detach(), h.grad


def ours(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = hidden.detach().requires_grad_(True)
    loss = head_loss_sum(head, h, targets)
    loss.backward()
    return loss.detach(), h.grad


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2040, help="labelled positions (8 x 255 = SmolLM2 batch 8 x 256)")
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--rounds", type=int, default=5, help="rounds at least (up to 15 while the spread is wide)")
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    head = nn.Linear(args.hidden, args.vocab, bias=False).requires_grad_(False)
    hidden = torch.randn(args.rows, args.hidden, generator=g)
    targets = torch.randint(0, args.vocab, (args.rows,), generator=g)
    (loss_a, grad_a), (loss_b, grad_b) = standard(hidden, head, targets), ours(hidden, head, targets)
    if not (torch.allclose(loss_a, loss_b, rtol=1e-5) and torch.allclose(grad_a, grad_b, atol=1e-6, rtol=1e-4)):
        raise SystemExit("the two losses disagree")
    times: dict[str, list[float]] = {"standard": [], "ours": []}

    def one_round(number: int) -> float:
        for name in interleaved(["standard", "ours"], number):
            fn = standard if name == "standard" else ours
            times[name].append(timed(lambda fn=fn: fn(hidden, head, targets)))
        return times["ours"][-1] / times["standard"][-1]

    ratio = ratio_rounds(one_round, min_rounds=args.rounds)
    a, b = statistics.median(times["standard"]), statistics.median(times["ours"])
    print(f"rows={args.rows} hidden={args.hidden} vocab={args.vocab}: standard {a:.3f} s, ours {b:.3f} s (medians)")
    print(f"ours over standard, per round: {ratio.text(3)}")
    print(f"loss_time_ratio_vs_standard={ratio.median:.3f} loss_time_ratio_range={ratio.low:.3f}-{ratio.high:.3f}")


if __name__ == "__main__":
    main()
