"""The quality benchmarks' record: every score and timing they read back, kept in git, so that a clean clone (runs/
is not in git, and its weights are too big for it) can rebuild the tables of docs/benchmarks.md and add to them.

``save`` copies the small files of every finished run in ``runs/bench_quality`` (``run.json``, ``metrics.jsonl``,
``bench_wall_s.txt`` and every evaluation result, ``*.json``; the base model's results; the step-time files) into
``docs/bench_records/``, same layout. ``restore`` copies a recorded folder back into ``runs/bench_quality`` only where
that folder holds no file yet, never over one, and never into a run that is being trained. After ``restore`` each
benchmark's ``--report-only`` reads every recorded run as finished (the record holds only the runs kept since it
was added: bench_quality.py and bench_defaults.py, whose tables are older, refuse to rewrite them from fewer runs). A restored run has no weights: a score it was
never given (a new snapshot, a new split) needs the run trained again (delete its folder first).

    .venv/bin/python -m benchmarks records save      # after benchmarking, with the tables it wrote
    .venv/bin/python -m benchmarks records restore   # on a fresh clone, before a --report-only
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.lib import ROOT, run_status
from xgblora_cli.common.fsutil import atomic_write_bytes

WORK = ROOT / "runs" / "bench_quality"
RECORDS = ROOT / "docs" / "bench_records"
KEPT_NAMES = {"metrics.jsonl", "bench_wall_s.txt"}  # besides every *.json


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=["save", "restore"])
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--records", type=Path, default=RECORDS)
    return p.parse_args()


def kept(path: Path) -> bool:
    """Whether a record keeps this file of a folder: an evaluation result or run summary (``*.json``), the metrics."""
    return path.is_file() and (path.suffix == ".json" or path.name in KEPT_NAMES)


def unfinished(folder: Path) -> bool:
    """A run that has started and not completed (its ``run.json`` says so): nothing of it is recorded yet."""
    return run_status(folder) not in (None, "complete")


def recorded_files(work: Path) -> list[Path]:
    """The files of ``work`` a record keeps, relative to it: in each folder one or two levels down (``TASK/`` and
    ``TASK/RUN/``), the files :func:`kept` names, unless the folder is an unfinished
    run. Weights, snapshots, boosters, recipes and the training data cut from GLUE stay out."""
    folders = [f for f in sorted(work.glob("*")) + sorted(work.glob("*/*")) if f.is_dir() and not unfinished(f)]
    return [path.relative_to(work) for folder in folders for path in sorted(folder.iterdir()) if kept(path)]


def save(work: Path, records: Path) -> tuple[int, int]:
    """Copy ``work``'s recorded files into ``records`` where new or changed; (files written, files already there).
    A recorded run whose folder is no longer in ``work`` stays recorded."""
    written = same = 0
    for rel in recorded_files(work):
        data, target = (work / rel).read_bytes(), records / rel
        if target.is_file() and target.read_bytes() == data:
            same += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        written += 1
    return written, same


def restore(work: Path, records: Path) -> tuple[int, int]:
    """Copy each recorded folder's files into ``work`` where that folder holds none of the kinds a record keeps (a run
    trained or being trained here, whose ``run.json`` is there, is never touched); (folders restored, folders left
    as they were)."""
    by_folder: dict[Path, list[Path]] = {}
    for path in sorted(records.rglob("*")):
        if path.is_file():
            by_folder.setdefault(path.parent.relative_to(records), []).append(path)
    restored = left = 0
    for rel, files in by_folder.items():
        target = work / rel
        if target.is_dir() and any(kept(p) for p in target.iterdir()):
            left += 1
            continue
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            atomic_write_bytes(target / path.name, path.read_bytes())
        restored += 1
    return restored, left


def main() -> None:
    args = parse_args()
    if args.action == "save":
        if not args.work.is_dir():
            raise SystemExit(f"{args.work}: no such folder; nothing to record (run a benchmark first)")
        written, same = save(args.work, args.records)
        print(f"{args.records}: {written} files written, {same} already recorded")
    else:
        if not args.records.is_dir():
            raise SystemExit(f"{args.records}: no such folder; nothing to restore")
        restored, left = restore(args.work, args.records)
        print(f"{args.work}: {restored} folders restored from {args.records}, {left} already there left as they were")


if __name__ == "__main__":
    main()
