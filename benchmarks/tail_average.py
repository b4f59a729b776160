"""What ``average_last: N`` would have made of a finished run: a copy of it ending on the tail average.

Training never sees the average (docs/boosters.md), so a run trained without the key, copied with the entry that
:func:`xgblora_cli.core.averaging.tail_average` makes from its last N boosters appended to the record, holds the
very record a run trained with it would hold; score the copy with ``xgblora eval``. The run itself is not touched.

    python -m benchmarks tail_average RUN --last 5 --out DIR
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from xgblora_cli.core.averaging import tail_average
from xgblora_cli.core.record import Record
from xgblora_cli.core.rundir import RunDir

COPIED = ("recipe.yaml", "run.json", "metrics.jsonl")


def averaged_copy(run_dir: Path, last: int, out: Path) -> Path:
    """Copy ``run_dir``'s recipe, info, metrics and record into ``out`` (a new folder) and append the tail average
    of its last ``last`` boosters at the run's final step; returns ``out``."""
    record = Record(run_dir)
    boosters = record.load()
    steps = sorted(record.end_steps())
    if RunDir(run_dir).info().get("status") != "complete" or not steps:
        raise SystemExit(f"{run_dir}: not a complete run with booster end steps")
    if not 2 <= last <= len(boosters):
        raise SystemExit(f"--last must be in 2..{len(boosters)} (the run's boosters), got {last}")
    out.mkdir(parents=True)
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    shutil.copytree(record.dir, out / "boosters")
    Record(out).append(tail_average(boosters[-last:]), steps[-1])
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks tail_average", description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--last", type=int, required=True, help="N: the booster ends averaged")
    p.add_argument("--out", type=Path, required=True, help="a new folder for the copy")
    args = p.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"--out {args.out} exists; give a new folder")
    print(averaged_copy(args.run, args.last, args.out))


if __name__ == "__main__":
    main()
