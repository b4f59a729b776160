"""Which k, kappa and re-warmup for xgblora: one change at a time around the preset, judged on the validation split.

Uses the training mix and validation split of ``bench_quality.py`` (same ``--work`` folder, same budget flags,
so its runs are reused) at one learning rate (``--lr``: the preset's default, from ``bench_quality.py``'s
grid). The preset itself is trained with two seeds so the table shows how much the validation numbers move by seed alone.
Validation accuracy (label scoring, held-out training questions) is the judge, validation loss is shown beside it.
Writes a table between the bench_ablation markers of ``docs/benchmarks.md``. Test sets are never touched.

    .venv/bin/python scripts/bench_ablation.py --lr 3e-3 [--steps 80] [--batch 4] [--seq 192]
"""

from __future__ import annotations

import argparse
import shlex
import sys

from bench_quality import add_budget_args, cut_splits, train_run, val_questions, validate, write_doc

from xgblora_cli.recipe import PRESETS

START, END = "<!-- bench_ablation:start -->", "<!-- bench_ablation:end -->"
# (what the table calls it, recipe key, a value other than the preset's), cheapest and most telling first
CHANGES = [("steps per booster kappa", "steps_per_booster", 5),
           ("blocks per booster k", "layers_per_booster", 2),
           ("re-warmup steps per booster", "train.rewarmup_steps", 2),
           ("steps per booster kappa", "steps_per_booster", 20),
           ("blocks per booster k", "layers_per_booster", 8)]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lr", type=float, required=True, help="the xgblora learning rate to vary the rest around")
    add_budget_args(p)
    return p.parse_args()


def write_table(args: argparse.Namespace, rows: list[tuple], pending: list[str]) -> None:
    """The table so far (rows: name, val accuracy, val loss, wall), and the variants not run yet."""
    reference = rows[0][1:3]
    lines = ["| xgblora, seed 0 unless said | val accuracy % (vs preset seed 0) | val loss (vs preset seed 0) | train wall (s) |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {acc:.1f} ({acc - reference[0]:+.1f}) | {loss:.3f} ({loss - reference[1]:+.3f}) | {wall:.0f} |"
              for name, acc, loss, wall in rows]
    lines += [f"| {name} | not run yet | | |" for name in pending]
    command = "python scripts/bench_ablation.py " + shlex.join(sys.argv[1:])
    body = (f"Command: `{command.strip()}`; budget {args.steps} steps x batch {args.batch} x at most {args.seq} tokens, "
            f"learning rate {args.lr:g}; validation accuracy (label scoring, mean over tasks) and loss (mean token NLL) "
            f"on the validation split ({val_questions(args)} held-out training questions per task for accuracy, the first "
            f"{args.val_per_task} of them for loss).\n\n" + "\n".join(lines))
    write_doc(args.doc, body, START, END)
    print(body, flush=True)


def main() -> None:
    args = parse_args()
    tasks = cut_splits(args.data, args.work, args.train_per_task, args.val_per_task, args.val_extra_per_task)
    preset = PRESETS["xgblora"]
    variants = [(f"preset (k={preset.layers_per_booster}, kappa={preset.steps_per_booster}, re-warmup 0), seed {seed}", seed, {})
                for seed in (0, 1)]
    variants += [(f"{label} = {value}", 0, {key: value}) for label, key, value in CHANGES]
    rows: list[tuple] = []
    for i, (name, seed, extra) in enumerate(variants):  # the table is rewritten after every run
        run = train_run(args, "xgblora", args.lr, seed, extra)
        rows.append((name, *validate(args, run["dir"], tasks), run["wall_s"]))
        write_table(args, rows, [name for name, _, _ in variants[i + 1 :]])


if __name__ == "__main__":
    main()
