"""The one renderer: every table (and plot) of docs/benchmarks.md and docs/boosters.md rewritten from the results
kept as data in ``benchmarks/results/`` alone. Nothing is measured, nothing parsed from markdown; a results file
that is not there leaves its section as it is.

    python -m benchmarks render [--check]      # --check: exit 1 (writing nothing) if a section would change
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from benchmarks import (
    booster_steps,
    boosters,
    defaults,
    diagnose,
    dtype,
    quality_report,
    sensitivity,
    tradeoff,
)
from benchmarks.lib import ROOT, block

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"


def sections(plots: bool = True) -> list[tuple[Path, str, str, Path, Callable[[Path], str]]]:
    """(doc, start marker, end marker, results file, render(results file) -> body) of every generated section;
    ``plots``: write the plots of the sections that have them too."""
    def sensitivity_body(path: Path) -> str:
        rows, longs, written = sensitivity.load_record(path)
        args = sensitivity.parse_args(["--lr", str(written.get("lr", 1e-2)), "--seeds", *map(str, written["seeds"])])
        return sensitivity.render(args, rows, longs, written)

    def tradeoff_body(path: Path) -> str:
        return tradeoff.render(tradeoff.load_record(path), sensitivity.load_record(RESULTS / "sensitivity.json")[0],
                               DOCS / "benchmarks.md", plots=plots)

    out = []
    for name in ("quality", "quality_grid"):
        marker = f"bench_{name}"
        out.append((DOCS / "benchmarks.md", f"<!-- {marker}:start -->", f"<!-- {marker}:end -->", RESULTS / f"{name}.json",
                    lambda path, doc=DOCS / "benchmarks.md": (quality_report.render_with_plots if plots else
                                                              lambda results, doc: quality_report.render(results))(json.loads(path.read_text()), doc)))
    out += [
        (DOCS / "benchmarks.md", dtype.START, dtype.END, RESULTS / "dtype.json", lambda path: dtype.render(json.loads(path.read_text()))[0]),
        (DOCS / "benchmarks.md", defaults.START, defaults.END, RESULTS / "defaults.json",
         lambda path: defaults.body(defaults.load_scores(path))),
        (DOCS / "benchmarks.md", sensitivity.START, sensitivity.END, RESULTS / "sensitivity.json", sensitivity_body),
        (DOCS / "benchmarks.md", tradeoff.START, tradeoff.END, RESULTS / "tradeoff.json", tradeoff_body),
        (DOCS / "boosters.md", boosters.START, boosters.END, RESULTS / "boosters.json",
         lambda path: boosters.render(boosters.load_results(path))),
        (DOCS / "boosters.md", diagnose.START, diagnose.END, RESULTS / "diagnosis", diagnose.render),
        (DOCS / "boosters.md", booster_steps.START, booster_steps.END, RESULTS / "booster_steps.json",
         lambda path: booster_steps.render(boosters.load_results(path))),
    ]
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks render", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="only say whether every section matches its results")
    args = p.parse_args()
    changed = []
    for doc, start, end, results, render in sections(plots=not args.check):
        if not results.exists() or not doc.is_file() or start not in doc.read_text():
            continue
        body = render(results)
        text = doc.read_text()
        if block(text, start, end).strip("\n") != body.strip("\n"):
            changed.append(f"{doc.relative_to(ROOT)} {start}")
            if not args.check:
                before, rest = text.split(start, 1)
                doc.write_text(f"{before}{start}\n{body}\n{end}{rest.split(end, 1)[1]}")
    print("\n".join(f"{'differs' if args.check else 'rewrote'}: {item}" for item in changed) or "every section matches its results")
    if args.check and changed:
        sys.exit(1)


if __name__ == "__main__":
    main()
