"""The ``xgblora`` command line: train, plan, sweep, report (:mod:`.training`); eval, merge, export
(:mod:`.results`); chat, generate (:mod:`.talk`). The only place that knows Typer."""

from __future__ import annotations

from xgblora_cli.cli import results, talk, training  # noqa: F401  (each module registers its commands)
from xgblora_cli.cli.app import app, plain_help


def main() -> None:
    plain_help()
    app()
