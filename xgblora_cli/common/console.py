"""Rich consoles that behave in pipes and logs: on a terminal they follow its width; off one (CI logs, ``nohup``,
``| tee``, a notebook) text is never wrapped or cut and tables get room (``OFF_TERMINAL_WIDTH`` columns), so a
path or a command printed by xgblora can always be copied whole."""

from __future__ import annotations

import sys
from typing import TextIO

from rich.console import Console

OFF_TERMINAL_WIDTH = 240


def make_console(stderr: bool = False, file: TextIO | None = None) -> Console:
    """A console on standard output (or ``stderr``, or ``file``) that wraps nothing off a terminal."""
    stream = file or (sys.stderr if stderr else sys.stdout)
    if stream.isatty():
        return Console(file=file, stderr=stderr and file is None)
    return Console(file=file, stderr=stderr and file is None, width=OFF_TERMINAL_WIDTH, soft_wrap=True)
