"""Tail averaging (``average_last: N``): the run ends with the mean of the weights at its last N booster ends.

With W_i the weights after booster i, the mean of W_{T-N+1} .. W_T is the run's last weights with booster T-N+j
scaled by (N - j + 1) / N (j = 1 .. N): the oldest of the N kept whole, the last at 1/N. A single late booster
therefore moves the end model by 1/N of its update, not all of it (boosting's shrinkage, applied to the tail after
the fact). Training never sees the average: it is one more entry appended to the record once the last booster has
merged, whose factors are the tail boosters' own with U scaled by -(j - 1)/N, so every weight stays
``round(W0 + concat(U) @ concat(V))`` and merges, resume and exports read it like any booster.
"""

from __future__ import annotations

import torch

from xgblora_cli.core.record import BoosterFactors


def tail_weights(count: int) -> list[float]:
    """What each of the last ``count`` boosters counts for in the mean of their end weights, oldest first:
    ``[1, (N-1)/N, ..., 1/N]`` for N = count."""
    return [(count - j) / count for j in range(count)]


def tail_average(tail: list[BoosterFactors]) -> BoosterFactors:
    """The record entry that turns the last weights into the mean of the weights at the ends of ``tail``.

    tail: the last N merged boosters, oldest first, each ``{weight: (U (d_out, r), V (r, d_in))}``; returns the
    entry after them (index: the last one's + 1) adapting the union of their blocks, whose factors for a weight
    are the tail's factors of that weight side by side, U scaled by ``tail_weights(N)[j] - 1`` (d_out, R) and V as
    it was (R, d_in); R is the summed rank of the tail boosters that touched the weight, the oldest (scaled by 0)
    left out.
    """
    weights = tail_weights(len(tail))
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for booster, weight in zip(tail, weights):
        if weight == 1.0:
            continue
        for name, (u, v) in booster.factors.items():
            parts.setdefault(name, []).append(((weight - 1.0) * u, v))
    factors = {name: (torch.cat([u for u, _ in pairs], dim=1), torch.cat([v for _, v in pairs], dim=0))
               for name, pairs in parts.items()}
    blocks = sorted({block for booster in tail for block in booster.blocks})
    return BoosterFactors(tail[-1].index + 1, blocks, factors)
