"""Every command the README and docs/ show still parses: ``xgblora ...`` against the command line's own parser
(options and arguments, without running anything), ``python -m benchmarks NAME ...`` against that benchmark's
``--help``, ``make TARGET`` against the Makefile. Usage synopses (with ``[...]``, ``|`` or ``...``) are skipped."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.S)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
START = re.compile(r"^(\.venv/bin/)?(xgblora |python -m benchmarks |\.venv/bin/python -m benchmarks |make |torchrun )")
SYNOPSIS = re.compile(r"\bNAME\b|\[[A-Z-]|\]\.\.\.|\.\.\.|[^ ]\|[^ ]| \| |<|>|\bN\b|\bX\b|TARGET|RUN_DIR|RECIPE|MODEL\b|\bRUN\b")


def commands(page: Path) -> list[str]:
    """The command lines of a page: in its code blocks (continuations joined, comments and prompts dropped) and in
    its inline code spans; usage synopses and placeholders (``TARGET``, ``RUN``, ``[--flag]``) are skipped."""
    text = page.read_text()
    lines = []
    for block in FENCE.findall(text):
        lines += block.replace("\\\n", " ").splitlines()
    lines += INLINE.findall(FENCE.sub("", text))
    found = []
    for line in lines:
        line = line.split("  #")[0].split(" # ")[0].strip().removeprefix("$ ")
        line = line.split(" | ")[-1] if line.startswith("printf") else line  # the command a pipe feeds
        line = line.split(" && ")[-1] if line.startswith("make install &&") else line
        if START.match(line) and not SYNOPSIS.search(line) and len(line.split()) > 2:  # not a bare command name
            found.append(line)
    return list(dict.fromkeys(found))


CASES = [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in commands(page)]


@lru_cache
def click_command():
    from typer.main import get_command

    from xgblora_cli.cli import app

    return get_command(app)


@lru_cache
def benchmark_help(name: str) -> str:
    done = subprocess.run([sys.executable, "-m", "benchmarks", name, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, f"python -m benchmarks {name} --help failed: {done.stderr[-500:]}"
    return done.stdout


def test_the_pages_show_commands() -> None:
    assert len(CASES) > 40 and any(line.startswith("xgblora chat") for _, line in CASES)


@pytest.mark.parametrize(("page", "line"), CASES, ids=[f"{p}: {line[:60]}" for p, line in CASES])
def test_a_documented_command_parses(page: str, line: str) -> None:
    words = shlex.split(line)
    if words[0] == "torchrun":  # the launcher's own flags, then the command: -m xgblora_cli ...
        words = ["xgblora", *words[words.index("xgblora_cli") + 1:]]
    if words[0] == "make":
        targets = re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M)
        assert words[1] in targets, f"{page}: make {words[1]}: no such target"
        return
    if words[0].endswith("python"):
        name, flags = words[3], [w.split("=")[0] for w in words[4:] if w.startswith("--")]
        text = benchmark_help(name)
        missing = [flag for flag in flags if flag not in text]
        assert not missing, f"{page}: python -m benchmarks {name}: unknown {missing}"
        return
    sub, args = words[1], words[2:]
    assert sub in click_command().commands, f"{page}: xgblora {sub}: no such command"
    click_command().commands[sub].make_context(sub, list(args))  # raises on an unknown option or a missing argument
