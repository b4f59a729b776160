"""The append-only record of merged boosters: a run directory's ``boosters/`` folder.

Each merged booster is one safetensors file ``boosters/booster_{t:06d}.safetensors`` (its factors
``U: (d_out, r)`` with the scale folded in and ``V: (r, d_in)`` per adapted weight, its blocks in the metadata),
listed in ``boosters/index.jsonl`` once the file is durable. The record is the truth; how it becomes weights
is :mod:`xgblora_cli.core.merge`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from xgblora_cli.common.errors import UserError, first_line
from xgblora_cli.common.fsutil import atomic_write_bytes, atomic_write_text
from xgblora_cli.core.rundir import RunDir

INDEX = "index.jsonl"


@dataclass
class BoosterFactors:
    """One entry of the record: booster t's index, the blocks it adapted and ``{weight name: (U, V)}``."""

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

    def append(self, booster: BoosterFactors, step: int | None = None) -> None:
        """Write the booster's factors durably, then list it in the index (both atomic), with the optimizer
        ``step`` it ended at (so ``eval --step`` can replay the record to any booster's end)."""
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
        entries.append({"index": booster.index, "blocks": booster.blocks, "file": booster.filename}
                       | ({} if step is None else {"step": step}))
        atomic_write_text(self.dir / INDEX, "".join(json.dumps(e) + "\n" for e in entries))

    def truncate(self, count: int) -> None:
        """Forget boosters ``count`` and later (merged after the checkpoint a resume starts from)."""
        entries = self._entries()
        if len(entries) > count:
            atomic_write_text(self.dir / INDEX, "".join(json.dumps(e) + "\n" for e in entries[:count]))

    def end_steps(self) -> dict[int, int]:
        """{optimizer step a booster ended at: boosters in the record by then}, for the boosters whose step the
        record holds (runs recorded before it kept steps have none)."""
        return {entry["step"]: count for count, entry in enumerate(self._entries(), 1) if "step" in entry}

    def load(self) -> list[BoosterFactors]:
        """Every recorded booster, in order."""
        from safetensors.torch import load_file

        boosters: list[BoosterFactors] = []
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
            boosters.append(BoosterFactors(entry["index"], list(entry["blocks"]), factors))
        return boosters


def boosters_at(run_dir: Path, step: int | None = None) -> list[BoosterFactors]:
    """The boosters that make up a run's model: the whole record, or (``step``) its state after that step, from a
    kept snapshot (the booster then in flight included as a last booster) or, at a step where a booster ended,
    from the record alone."""
    record = Record(run_dir)
    boosters = record.load()
    if step is None:
        return boosters
    run = RunDir(run_dir)
    snapshots = run.snapshot_steps()
    if step not in snapshots:
        ends = record.end_steps()
        if step in ends:
            return boosters[: ends[step]]
        kept = ", ".join(map(str, snapshots)) or "none"
        ended = f"boosters ended at steps {', '.join(map(str, sorted(ends)))}" if ends else "its record keeps no end steps"
        raise UserError(f"--step {step}: {run_dir} has no snapshot of step {step} (it kept {kept}; set train.snapshot_every) "
                        f"and no booster ended there ({ended})")
    recorded, in_flight = run.load_snapshot(step)
    if recorded > len(boosters):
        raise UserError(f"{run_dir}: the snapshot of step {step} needs {recorded} recorded boosters, the record has {len(boosters)}; "
                        "the run directory is corrupt")
    boosters = boosters[:recorded]
    if in_flight:
        boosters.append(BoosterFactors(boosters[-1].index + 1 if boosters else 0, [], in_flight))
    return boosters
