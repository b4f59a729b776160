"""The one place hub datasets are read (through ``datasets``), so every failure is the same kind of one-line error."""

from __future__ import annotations

from xgblora_cli.common.errors import UserError, first_line


def hub_rows(name: str, config: str | None, split: str, failure: str) -> list:
    """The rows of ``name`` (``config``) ``split`` as a list; any failure (offline, no such dataset, no split)
    becomes ``UserError("<failure> (<the error's first line>)<hint>")`` where ``failure`` may hold ``{error}``."""
    try:
        import datasets

        found = datasets.load_dataset(name, split=split) if config is None else datasets.load_dataset(name, config, split=split)
        return list(found)
    except Exception as err:  # network, auth, missing repo or split: all user-facing
        raise UserError(failure.replace("{error}", first_line(err))) from None
