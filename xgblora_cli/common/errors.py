"""The one exception type that the CLI turns into a single line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (recipe, paths, flags): shown as one line, exit code 2.

    The message should name the file and the key at fault, and what is allowed.
    """


def first_line(err: BaseException) -> str:
    """An exception's first line of text (or its type's name), to quote inside a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
