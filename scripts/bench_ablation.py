"""Which k, kappa and re-warmup for xgblora: one change at a time around the preset, judged on the validation split.

Uses the training mix and validation split of ``bench_quality.py`` (same ``--work`` folder, same budget flags,
so its runs are reused) at one learning rate (``--lr``: the preset's default, from ``bench_quality.py``'s
grid). The preset itself is trained with two seeds so the table shows how much the validation numbers move by seed alone.
Validation accuracy (label scoring, held-out training questions) is the judge, validation loss is shown beside it.
Writes a table between the bench_ablation markers of ``docs/benchmarks.md``. Test sets are never touched.

    .venv/bin/python scripts/bench_ablation.py --lr 1e-2 [--steps 80] [--batch 4] [--seq 192]
"""

from __future__ import annotations

import argparse
import shlex
import sys

from bench_quality import add_budget_args, cut_splits, train_run, validate, write_doc

from xgblora_cli.recipe import PRESETS

START, END = "<!-- bench_ablation:start -->", "<!-- bench_ablation:end -->"
# (what the table calls it, recipe key, values tried besides the preset's)
CHANGES = [("blocks per booster k", "layers_per_booster", [2, 8]),
           ("steps per booster kappa", "steps_per_booster", [5, 20]),
           ("re-warmup steps per booster", "train.rewarmup_steps", [2])]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lr", type=float, required=True, help="the xgblora learning rate to vary the rest around")
    add_budget_args(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    tasks = cut_splits(args.data, args.work, args.train_per_task, args.val_per_task)
    preset = PRESETS["xgblora"]
    rows = []
    for seed in (0, 1):
        run = train_run(args, "xgblora", args.lr, seed)
        rows.append((f"preset (k={preset.layers_per_booster}, kappa={preset.steps_per_booster}, re-warmup 0), seed {seed}",
                     *validate(args, run["dir"], tasks), run["wall_s"]))
    reference = rows[0][1:3]
    for label, key, values in CHANGES:
        for value in values:
            run = train_run(args, "xgblora", args.lr, 0, {key: value})
            rows.append((f"{label} = {value}", *validate(args, run["dir"], tasks), run["wall_s"]))
    lines = ["| xgblora, seed 0 unless said | val accuracy % (vs preset seed 0) | val loss (vs preset seed 0) | train wall (s) |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {acc:.1f} ({acc - reference[0]:+.1f}) | {loss:.3f} ({loss - reference[1]:+.3f}) | {wall:.0f} |"
              for name, acc, loss, wall in rows]
    command = "python scripts/bench_ablation.py " + shlex.join(sys.argv[1:])
    body = (f"Command: `{command.strip()}`; budget {args.steps} steps x batch {args.batch} x at most {args.seq} tokens, "
            f"learning rate {args.lr:g}; validation accuracy (label scoring, mean over tasks) and loss (mean token NLL) on the "
            f"validation split ({args.val_per_task} held-out training questions per task).\n\n" + "\n".join(lines))
    write_doc(args.doc, body, START, END)
    print(body)


if __name__ == "__main__":
    main()
