"""Randomness seeded by position: every draw depends on (seed, index, purpose) only, never on history."""

from __future__ import annotations

import hashlib

import torch


def seeded_generator(seed: int, index: int, purpose: str) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, index, purpose)``."""
    digest = hashlib.sha256(f"{seed}:{index}:{purpose}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
