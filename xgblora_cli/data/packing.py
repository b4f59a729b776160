"""Sequence packing: consecutive examples of an epoch's order laid into rows of at most ``width`` tokens.

Greedy and in order (an example starts a new row when it does not fit the current one), so the layout follows
from the seeded order and the examples' lengths alone: a resumed run lays out the same rows. No example is split
or dropped; every example is at most ``width`` tokens already (prompts.py truncates to ``max_len``).
"""

from __future__ import annotations


def pack_epoch(lengths: list[int], order: list[int], width: int) -> list[list[int]]:
    """Rows of example indices: ``order[i]`` has ``lengths[i]`` tokens; each row's lengths sum to at most ``width``."""
    rows: list[list[int]] = []
    used = width  # forces a first row
    for index, length in zip(order, lengths):
        if length > width:
            raise ValueError(f"example {index} has {length} tokens, more than a packed row's {width}")
        if used + length > width:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += length
    return rows
