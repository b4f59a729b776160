"""``xgblora chat``: a conversation with a target, in its own prompt format, answers streamed as they come.

On a terminal: a ``you>`` prompt with line editing (readline), answers streamed, ``/reset``, ``/system TEXT``,
``/exit``; Ctrl-C stops the answer being generated and keeps the session, Ctrl-D leaves. With ``--compare base``
the base model answers each turn too: side by side on a wide terminal, one after the other on a narrow one.
Off a terminal (piped standard input) each line is a user turn (``/`` commands honoured) and answers go to
standard output, one line per turn, so a session can be scripted. A literal ``\\n`` in a line is a line break in
the turn (``...review.\\n\\nAnswer format: negative/positive``). History that no longer fits the target's
length (its ``train.max_seq_len``, less room for the answer) loses its oldest exchange first.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from dataclasses import dataclass, field
from types import FrameType
from typing import Callable, Iterator, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from xgblora_cli.core.opening import Opened
from xgblora_cli.generation.engine import (
    Answer,
    Sampling,
    StopFlag,
    prepare_for_generation,
    stream,
)
from xgblora_cli.generation.prompting import Messages, fit_conversation

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit (or Ctrl-D); Ctrl-C stops an answer"
SIDE_BY_SIDE_COLUMNS = 100  # narrower terminals show the two answers one after the other


@dataclass
class Speaker:
    """One model in the session: its label, what was opened, and its own history of the conversation."""

    label: str
    opened: Opened
    history: Messages = field(default_factory=list)

    def budget(self, sampling: Sampling) -> int:
        """Prompt tokens at most: the format's length less room for the answer (at least half of it)."""
        length = self.opened.prompt.max_len
        return max(length - sampling.max_new_tokens, length // 2)


class Session:
    """The conversation state and its commands; ``ask`` answers one user turn with every speaker."""

    def __init__(self, speakers: list[Speaker], sampling: Sampling, system: str | None, out: Console) -> None:
        self.speakers, self.sampling, self.system, self.out = speakers, sampling, system, out
        self.stop = StopFlag()
        for speaker in speakers:
            prepare_for_generation(speaker.opened.model)

    def command(self, line: str) -> bool:
        """Run a ``/`` command; False when the session should end."""
        name, _, argument = line.strip().partition(" ")
        if name in ("/exit", "/quit"):
            return False
        if name == "/reset":
            for speaker in self.speakers:
                speaker.history.clear()
            self.out.print("(conversation reset)", style="dim")
        elif name == "/system":
            self.system = argument.strip() or None
            for speaker in self.speakers:
                speaker.history.clear()
            self.out.print(f"(system prompt {'set' if self.system else 'cleared'}; conversation reset)", style="dim")
        else:
            self.out.print(f"unknown command {name!r}; {HELP}", style="yellow", highlight=False)
        return True

    def messages(self, speaker: Speaker, text: str) -> Messages:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + speaker.history + [{"role": "user", "content": text}]

    def answer(self, speaker: Speaker, text: str, on_text: Callable[[str], None]) -> Answer:
        """One speaker's answer to ``text`` (streamed through ``on_text``), added to its history."""
        messages = self.messages(speaker, text)
        opened = speaker.opened
        ids, dropped = fit_conversation(opened.prompt, opened.tokenizer, messages, speaker.budget(self.sampling))
        if dropped:
            speaker.history = speaker.history[2 * dropped:]
            self.out.print(f"({speaker.label}: the {dropped} oldest exchange{'s' if dropped > 1 else ''} no longer "
                           f"fit{'' if dropped > 1 else 's'} {opened.prompt.max_len} tokens and {'were' if dropped > 1 else 'was'} dropped)",
                           style="dim", highlight=False)
        self.stop.set = False
        result = stream(opened.model, opened.tokenizer, ids, self.sampling, on_text, self.stop)
        speaker.history += [{"role": "user", "content": text}, {"role": "assistant", "content": result.text}]
        return result


@contextlib.contextmanager
def on_ctrl_c(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    """``handler`` answers SIGINT (Ctrl-C) inside the block, whatever the launcher left; the previous one after it."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def ctrl_c_stops(flag: StopFlag) -> contextlib.AbstractContextManager[None]:
    """While generating, Ctrl-C sets ``flag`` (the answer stops at its next token) instead of interrupting."""
    return on_ctrl_c(lambda signum, frame: setattr(flag, "set", True))


def ctrl_c_interrupts() -> contextlib.AbstractContextManager[None]:
    """Ctrl-C raises KeyboardInterrupt (the prompt answers it with a hint) even where the launcher left SIGINT ignored:
    a script's background job inherits it so, and Python then installs no handler of its own."""
    return on_ctrl_c(signal.default_int_handler)


def turn_on_terminal(session: Session, text: str, console: Console) -> None:
    """Stream each speaker's answer; two speakers side by side when the terminal is wide enough."""
    side_by_side = len(session.speakers) > 1 and console.width >= SIDE_BY_SIDE_COLUMNS
    if side_by_side:
        texts = {s.label: Text() for s in session.speakers}

        def table() -> Table:
            grid = Table(show_header=True, expand=True, show_lines=False)
            for speaker in session.speakers:
                grid.add_column(speaker.label, ratio=1)
            grid.add_row(*texts.values())
            return grid

        with Live(table(), console=console, refresh_per_second=12) as live, ctrl_c_stops(session.stop):
            for speaker in session.speakers:
                result = session.answer(speaker, text, lambda piece, s=speaker: (texts[s.label].append(piece), live.update(table())))
                texts[speaker.label].append(footer(result), style="dim")
                live.update(table())
        return
    for speaker in session.speakers:
        console.print(f"{speaker.label}>", style="bold cyan", end=" ")
        with ctrl_c_stops(session.stop):
            result = session.answer(speaker, text, lambda piece: console.print(piece, end="", markup=False, highlight=False))
        console.print()
        console.print(footer(result).strip(), style="dim", highlight=False)


def footer(result: Answer) -> str:
    stopped = " (stopped)" if result.stopped else ""
    first = f", first token {result.first_token_s:.2f} s" if result.first_token_s is not None else ""
    return f"\n[{result.tokens} tokens, {result.tokens_per_s:.1f} tokens/s{first}]{stopped}"


def turn_piped(session: Session, text: str, out: TextIO) -> None:
    """Answers to standard output: the answer alone, or ``label: answer`` per speaker when comparing."""
    for speaker in session.speakers:
        pieces: list[str] = []
        with ctrl_c_stops(session.stop):
            session.answer(speaker, text, pieces.append)
        answer = "".join(pieces).strip().replace("\n", "\\n")  # one line per answer: its line breaks as \\n
        out.write(f"{speaker.label}: {answer}\n" if len(session.speakers) > 1 else f"{answer}\n")
        out.flush()


def run(session: Session, interactive: bool, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """The read-answer loop until ``/exit``, Ctrl-D or the end of standard input."""
    console = Console(file=stdout) if interactive else None
    if interactive:
        _readline()
        console.print(HELP, style="dim", highlight=False)
    with ctrl_c_interrupts() if interactive else contextlib.nullcontext():
        read_lines(session, interactive, console, stdin, stdout)


def read_lines(session: Session, interactive: bool, console: Console | None, stdin: TextIO, stdout: TextIO) -> None:
    """Read a line (the ``you>`` prompt on a terminal), act on it, until ``/exit``, Ctrl-D or the end of input."""
    while True:
        try:
            line = input("you> ") if interactive else stdin.readline()
            if not interactive and line == "":
                break
            if not step(session, line.rstrip("\n"), interactive, console, stdout):
                break
        except EOFError:
            break
        except KeyboardInterrupt:  # outside an answer (at the prompt, or printing): the session goes on
            print("\n(Ctrl-D or /exit leaves)", file=stdout, flush=True)


def step(session: Session, line: str, interactive: bool, console: Console | None, stdout: TextIO) -> bool:
    """One line of input: a command or a user turn (``\\n`` in it: a line break); False when the session should end."""
    line = line.replace("\\n", "\n")
    if not line.strip():
        return True
    if line.lstrip().startswith("/"):
        return session.command(line)
    if interactive:
        turn_on_terminal(session, line, console)
    else:
        turn_piped(session, line, stdout)
    return True


def _readline() -> None:
    """Line editing and history for ``input()`` where the platform has readline."""
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401
