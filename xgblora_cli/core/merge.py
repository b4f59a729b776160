"""Exact merging: the base checkpoint's tensors, and every touched weight recomputed from them and the record.

The record is the truth and in-memory weights are a cache of ``base + record``: a touched weight is always
``round(W0 + concat(U) @ concat(V))``, summed in float64 from the memory-mapped base tensor and the stacked
factors of every booster that touched it (:func:`exact_weight`, a pure function), and rounded once to the
model's dtype, so its error is at most half an ulp however many boosters were merged. The sum runs on the
training device, a chunk of rows at a time (:func:`exact_rows_into`): W0 is read from the file chunk by chunk,
never held whole, and the device holds 64 MiB of float64 at most besides the stacked factors. Training (after each
booster), resume, ``xgblora eval`` of a run and ``xgblora merge`` all go through :func:`apply_record` /
:func:`write_merged`; a quantized layer keeps the stacked factors beside it instead (see quantized.py).
"""

from __future__ import annotations

import torch
from torch import nn

from xgblora_cli.common.errors import UserError
from xgblora_cli.core.record import BoosterFactors
from xgblora_cli.models.base_weights import BaseWeights
from xgblora_cli.models.quantized import is_quantized, linear_shape, set_merged
from xgblora_cli.models.sharding import local_rows

CHUNK_BYTES = 64 * 2**20  # float64 rows summed at a time on the device during a merge


def exact_weight(w0: torch.Tensor, u: torch.Tensor | None, v: torch.Tensor | None) -> torch.Tensor:
    """``W0 + U @ V`` in float64: w0 (d_out, d_in), u (d_out, R), v (R, d_in) (None: no update).

    float64 keeps the sum's own error far below half an ulp of fp32/bf16 even where the sum nearly cancels,
    so rounding it once to the model dtype gives the nearest representable weight.
    """
    w0 = w0.to(torch.float64)
    if u is None or v is None:
        return w0
    return torch.addmm(w0, u.to(torch.float64), v.to(torch.float64))


def exact_rows_into(out: torch.Tensor, base: BaseWeights, name: str, u: torch.Tensor | None, v: torch.Tensor | None,
                    chunk_bytes: int = CHUNK_BYTES, row_offset: int = 0) -> None:
    """``out[:] = round(W0 + U @ V)`` for weight ``name``, computed on ``out``'s device in float64, rows in chunks.

    out: (d_out, d_in) in the model's dtype, on the training device, or only rows ``row_offset ..`` of it (a
    rank's shard); u: (d_out, R), v: (R, d_in), the whole weight's factors. Each chunk of
    W0's rows is read from the memory-mapped base, moved to the device and summed there with :func:`exact_weight`,
    so the device holds at most ``chunk_bytes`` of float64 besides the factors (R (d_out + d_in) float64 values).
    The result is the same as :func:`exact_weight` on the whole tensor (one rounding of a float64 sum).
    """
    d_out, d_in = out.shape
    rows = max(1, chunk_bytes // (8 * d_in))
    device = out.device
    u64 = None if u is None else u[row_offset : row_offset + d_out].to(device=device, dtype=torch.float64)
    v64 = None if v is None else v.to(device=device, dtype=torch.float64)
    for start in range(0, d_out, rows):
        stop = min(start + rows, d_out)
        w0 = base.rows(name, row_offset + start, row_offset + stop).to(device)
        out[start:stop].copy_(exact_weight(w0, None if u64 is None else u64[start:stop], v64))


class FactorStack:
    """The factors of every merged booster, per weight name, in merge order (what the record says, in memory)."""

    def __init__(self) -> None:
        self.factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def add(self, booster: BoosterFactors) -> list[str]:
        """Remember a booster's factors; returns the weight names it touched."""
        for name, pair in booster.factors.items():
            self.factors.setdefault(name, []).append(pair)
        return list(booster.factors)

    def stacked(self, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Every merged factor of ``name`` side by side: U (d_out, R) and V (R, d_in), R = total rank."""
        pairs = self.factors[name]
        return torch.cat([p[0].to(dtype) for p in pairs], dim=1), torch.cat([p[1].to(dtype) for p in pairs], dim=0)


def merged_weight(base: BaseWeights, stack: FactorStack, name: str) -> torch.Tensor:
    """Weight ``name`` of ``base + stack``, exact in float64 (d_out, d_in)."""
    u, v = stack.stacked(name, torch.float64) if stack.factors.get(name) else (None, None)
    return exact_weight(base.get(name), u, v)


def write_merged(model: nn.Module, base: BaseWeights, stack: FactorStack, names: list[str]) -> None:
    """Set each named weight of ``model`` to its exact value from ``base`` and ``stack``, rounded once to the
    weight's dtype, computed where the weight lives (:func:`exact_rows_into`); a quantized layer instead keeps
    the stacked factors beside it (see quantized.py)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in names:
            module = model.get_submodule(name.rsplit(".", 1)[0])
            if is_quantized(module):
                set_merged(module, *stack.stacked(name, torch.float32))
                continue
            u, v = stack.stacked(name, torch.float64) if stack.factors.get(name) else (None, None)
            local, start = local_rows(params[name])  # a sharded weight: this rank's rows only
            exact_rows_into(local, base, name, u, v, row_offset=start)


def apply_record(model: nn.Module, base: BaseWeights, boosters: list[BoosterFactors]) -> FactorStack:
    """Load ``base + boosters`` into ``model`` (which holds the base weights); returns the cache."""
    stack = FactorStack()
    touched: set[str] = set()
    for booster in boosters:
        touched.update(stack.add(booster))
    params = dict(model.named_parameters())
    unknown = sorted(touched - set(params))
    if unknown:
        raise UserError(f"the booster record names weights the model does not have (first: {unknown[0]}); the run does not match this base model")
    for name in sorted(touched):
        shape = linear_shape(model.get_submodule(name.rsplit(".", 1)[0]))
        for u, v in stack.factors[name]:
            if (u.shape[0], v.shape[1]) != shape or u.shape[1] != v.shape[0]:
                raise UserError(f"the booster record's update for {name} is {u.shape[0]}x{v.shape[1]}, the model's weight is "
                                f"{shape[0]}x{shape[1]}; the run does not match this base model")
    write_merged(model, base, stack, sorted(touched))
    return stack
