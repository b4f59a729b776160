"""The one ``--force`` rule of every command that writes a folder or a file: an existing output is refused
without ``--force``; with it, only an output xgblora itself wrote (it carries that command's marker) is
replaced, and anything else is refused with one line. An empty folder counts as no output."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from xgblora_cli.common.errors import UserError


def check_replace(out: Path, force: bool, ours: Callable[[Path], bool], flag: str, writer: str, hint: str = "") -> bool:
    """Whether ``out`` exists as an output to replace (True: it will be, with ``force``); raises where it may not be.

    ``ours(out)`` says whether ``out`` carries the marker of ``writer`` (e.g. ``xgblora merge``); ``flag`` names
    the option in messages (``--out``); ``hint`` follows the refusal without ``force`` (``(or --resume ...)``).
    """
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not force:
        raise UserError(f"{flag} {out}: already exists; pass --force to replace it{hint}")
    if not ours(out):
        kind = "folder" if out.is_dir() else "file"
        raise UserError(f"{flag} {out}: this {kind} was not written by {writer}; --force replaces only xgblora's own "
                        "outputs (choose another path)")
    return True


def has_file(name: str) -> Callable[[Path], bool]:
    """A marker test: a folder holding the file ``name`` (``xgblora_merge.json``, ``sweep.json``, ...)."""
    return lambda out: out.is_dir() and (out / name).is_file()
