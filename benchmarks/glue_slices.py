"""Cut the SST-2 slices shipped in data/ from the GLUE release's TSV files (the quickstart's data).

    .venv/bin/python -m benchmarks glue_slices [--glue ../shared/data/glue] [--out data]

Writes, for the quickstart and the tests:
  data/sst2_train_2000.jsonl  2,000 SST-2 training sentences of 5+ words, 1,000 per class, as LLM-Adapters records
  data/sst2_val_400.jsonl     400 more training sentences (200 per class), disjoint: the validation split
  data/sst2_dev.tsv           GLUE's SST-2 dev split (872 labelled sentences), unchanged: the test split
The draw is seeded and the same as ``benchmarks/quality.py``'s sst2 task, so the files are byte-identical
on every run and the benchmark's SST-2 numbers are about this very data.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from benchmarks.lib import GLUE_DIR, ROOT, TaskBudget, cut_glue, write_records

# the quickstart's SST-2 data: the same cut as benchmarks/quality.py's sst2 task
SST2 = TaskBudget("sst2", train=1000, val=200, steps=100, batch=8, seq=128, min_words=5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--glue", type=Path, default=GLUE_DIR)
    p.add_argument("--out", type=Path, default=ROOT / "data")
    args = p.parse_args()
    train, val = cut_glue(args.glue, SST2)
    for name, rows in (("sst2_train_2000.jsonl", train), ("sst2_val_400.jsonl", val)):
        write_records(args.out / name, "sst2", rows)
        print(f"wrote {args.out / name} ({len(rows)} records)")
    shutil.copyfile(args.glue / "SST-2" / "dev.tsv", args.out / "sst2_dev.tsv")
    print(f"copied {args.out / 'sst2_dev.tsv'}")


if __name__ == "__main__":
    main()
