"""The append-only record of merged boosters, and applying it to a base model exactly.

The record is the truth; in-memory weights are a cache of ``base + record``. Each merged booster is one
safetensors file ``boosters/booster_{t:06d}.safetensors`` (its factors ``U: (d_out, r)`` with the scale folded
in and ``V: (r, d_in)`` per adapted weight, its blocks in the metadata), listed in ``boosters/index.jsonl``
once the file is durable. A weight touched by boosters is always recomputed as
``round(W0 + concat(U) @ concat(V))`` (summed in float64) from the memory-mapped base tensor, so its error is at most half
an ulp of the model dtype however many boosters were merged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from xgblora_cli.errors import UserError, first_line
from xgblora_cli.fsutil import atomic_write_bytes, atomic_write_text
from xgblora_cli.models import BaseWeights
from xgblora_cli.quantized import is_quantized, linear_shape, set_merged
from xgblora_cli.rundir import RunDir

INDEX = "index.jsonl"


@dataclass
class Booster:
    """One merged booster: its index t, the blocks it adapted and ``{weight name: (U, V)}``."""

    index: int
    blocks: list[int]
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def filename(self) -> str:
        return f"booster_{self.index:06d}.safetensors"

    def digest(self) -> torch.Tensor:
        """A float64 fingerprint (sums and absolute sums of every factor): equal on ranks that merged alike."""
        parts = [torch.stack([f.double().sum(), f.double().abs().sum()]) for name in sorted(self.factors) for f in self.factors[name]]
        return torch.cat(parts)


class Record:
    """The ``boosters/`` folder of a run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir) / "boosters"

    def _entries(self) -> list[dict]:
        index = self.dir / INDEX
        if not index.is_file():
            return []
        entries = []
        for number, line in enumerate(index.read_text().splitlines(), 1):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{index}: line {number} is not valid JSON; the run directory is corrupt") from None
        return entries

    def __len__(self) -> int:
        return len(self._entries())

    def append(self, booster: Booster) -> None:
        """Write the booster's factors durably, then list it in the index (both atomic)."""
        from safetensors.torch import save

        self.dir.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        for name, (u, v) in booster.factors.items():
            tensors[f"{name}::U"] = u.contiguous()
            tensors[f"{name}::V"] = v.contiguous()
        meta = {"index": str(booster.index), "blocks": json.dumps(booster.blocks)}
        atomic_write_bytes(self.dir / booster.filename, save(tensors, metadata=meta))
        entries = self._entries()
        if entries and entries[-1]["index"] >= booster.index:
            raise RuntimeError(f"record ends at booster {entries[-1]['index']}, cannot append booster {booster.index}")
        entries.append({"index": booster.index, "blocks": booster.blocks, "file": booster.filename})
        atomic_write_text(self.dir / INDEX, "".join(json.dumps(e) + "\n" for e in entries))

    def truncate(self, count: int) -> None:
        """Forget boosters ``count`` and later (merged after the checkpoint a resume starts from)."""
        entries = self._entries()
        if len(entries) > count:
            atomic_write_text(self.dir / INDEX, "".join(json.dumps(e) + "\n" for e in entries[:count]))

    def load(self) -> list[Booster]:
        """Every recorded booster, in order."""
        from safetensors.torch import load_file

        boosters: list[Booster] = []
        for entry in self._entries():
            path = self.dir / entry["file"]
            if (boosters and entry["index"] <= boosters[-1].index) or not path.is_file():
                raise UserError(f"{self.dir}: booster {entry['index']} is missing or out of order; the run directory is corrupt")
            try:
                tensors = load_file(path)
                names = sorted({key.rsplit("::", 1)[0] for key in tensors})
                factors = {name: (tensors[f"{name}::U"], tensors[f"{name}::V"]) for name in names}
            except Exception as err:
                raise UserError(f"{path}: unreadable booster file ({first_line(err)}); the run directory is corrupt") from None
            boosters.append(Booster(entry["index"], list(entry["blocks"]), factors))
        return boosters


class MergedWeights:
    """The stacked factors of every merged booster, per weight, and the exact weights they give."""

    def __init__(self, base: BaseWeights) -> None:
        self.base = base
        self.factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def add(self, booster: Booster) -> list[str]:
        """Remember a booster's factors; returns the weight names it touched."""
        for name, pair in booster.factors.items():
            self.factors.setdefault(name, []).append(pair)
        return list(booster.factors)

    def exact(self, name: str) -> torch.Tensor:
        """``W0 + sum of all updates`` for weight ``name``, shape (d_out, d_in), in float64.

        float64 keeps the sum's own error far below half an ulp of fp32/bf16 even where the sum nearly
        cancels, so rounding it once to the model dtype gives the nearest representable weight.
        """
        w0 = self.base.get(name).to(torch.float64)
        if not self.factors.get(name):
            return w0
        u, v = self.stacked(name, torch.float64)
        return torch.addmm(w0, u, v)

    def stacked(self, name: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Every merged factor of ``name`` side by side: U (d_out, R) and V (R, d_in), R = total rank."""
        pairs = self.factors[name]
        return torch.cat([p[0].to(dtype) for p in pairs], dim=1), torch.cat([p[1].to(dtype) for p in pairs], dim=0)

    def write_into(self, model: nn.Module, names: list[str]) -> None:
        """Set each named weight of ``model`` to its exact value, rounded once to the weight's dtype; a
        quantized layer instead keeps the merged factors beside it (see quantized.py)."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name in names:
                module = model.get_submodule(name.rsplit(".", 1)[0])
                if is_quantized(module):
                    set_merged(module, *self.stacked(name, torch.float32))
                    continue
                param = params[name]
                param.copy_(self.exact(name).to(device=param.device, dtype=param.dtype))


def boosters_at(run_dir: Path, step: int | None = None) -> list[Booster]:
    """The boosters that make up a run's model: the whole record, or (``step``) its state at a kept snapshot,
    the booster then in flight included as a last booster."""
    boosters = Record(run_dir).load()
    if step is None:
        return boosters
    merged, in_flight = RunDir(run_dir).load_snapshot(step)
    if merged > len(boosters):
        raise UserError(f"{run_dir}: the snapshot of step {step} needs {merged} recorded boosters, the record has {len(boosters)}; the run directory is corrupt")
    boosters = boosters[:merged]
    if in_flight:
        boosters.append(Booster(boosters[-1].index + 1 if boosters else 0, [], in_flight))
    return boosters


def apply_record(model: nn.Module, base: BaseWeights, boosters: list[Booster]) -> MergedWeights:
    """Load ``base + boosters`` into ``model`` (which holds the base weights); returns the cache."""
    merged = MergedWeights(base)
    touched: set[str] = set()
    for booster in boosters:
        touched.update(merged.add(booster))
    params = dict(model.named_parameters())
    unknown = sorted(touched - set(params))
    if unknown:
        raise UserError(f"the booster record names weights the model does not have (first: {unknown[0]}); the run does not match this base model")
    for name in sorted(touched):
        shape = linear_shape(model.get_submodule(name.rsplit(".", 1)[0]))
        for u, v in merged.factors[name]:
            if (u.shape[0], v.shape[1]) != shape or u.shape[1] != v.shape[0]:
                raise UserError(f"the booster record's update for {name} is {u.shape[0]}x{v.shape[1]}, the model's weight is "
                                f"{shape[0]}x{shape[1]}; the run does not match this base model")
    merged.write_into(model, sorted(touched))
    return merged
