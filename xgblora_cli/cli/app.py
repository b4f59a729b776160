"""The Typer application and what every command shares: one-line errors (exit 2), what Ctrl-C leaves behind
(exit 130), consoles that never wrap off a terminal, help without type markers, and ``--version``."""

from __future__ import annotations

import functools
import sys
from typing import Callable

import typer

from xgblora_cli import __version__
from xgblora_cli.common.console import make_console
from xgblora_cli.common.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Gradient-boosted low-rank LoRA fine-tuning.")
console = make_console(stderr=True)  # notes, progress and results lines
out_console = make_console()  # tables and answers (standard output)

INTERRUPTED = {  # what Ctrl-C leaves behind, by command
    "train": "interrupted; work since the last checkpoint is lost (continue with --resume)",
    "generate": "interrupted; the answers written so far are kept (continue with --resume)",
    "sweep": "interrupted; finished rates are kept (run the same sweep again to continue)",
}


def user_errors(func: Callable) -> Callable:
    """Turn UserError into one line and exit 2; Ctrl-C into what it left behind (a resume hint) and exit 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            print(INTERRUPTED.get(func.__name__.removesuffix("_command"), "interrupted"), file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def versions() -> str:
    """``xgblora 0.1.0 (torch 2.13.0+cpu, transformers 5.25.0, device: cpu)``."""
    import torch
    import transformers

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.device_count()} x {torch.cuda.get_device_name(0)})"
    else:
        device = "cpu (no CUDA device)"
    return f"xgblora {__version__} (torch {torch.__version__}, transformers {transformers.__version__}, device: {device})"


def _print_version(value: bool) -> None:
    if value:
        print(versions())
        raise typer.Exit()


@app.callback()
def options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print xgblora's, torch's and transformers' versions and the device, then exit"),
) -> None:
    """Gradient-boosted low-rank LoRA fine-tuning."""


VALUE_NAMES = {"int": "N", "float": "X", "Path": "PATH", "str": "TEXT", "list[str]": "TEXT", "list[Path]": "PATH"}


def plain_help() -> None:
    """Help as a person writes it: ``--max-new-tokens N`` instead of a ``<int>`` after every flag, ``RECIPE``
    instead of ``{RECIPE}``, ``[KEY=VALUE]...`` instead of ``[[KEY=VALUE]...]...`` (typer's own markers; a typer
    without these hooks keeps its own help)."""
    from typer import core

    def value_name(self, ctx) -> str | None:
        if isinstance(self, core.TyperArgument) or getattr(self, "is_flag", False) or getattr(self, "count", False):
            return None
        if getattr(self, "metavar", None):
            return self.metavar
        bare = self.bare_type() if hasattr(self, "bare_type") else ""
        return VALUE_NAMES.get(bare, "VALUE")

    def usage_name(self) -> str:
        name = self.metavar or self.name.upper()
        return name if self.metavar or self.nargs == 1 else f"{name}..."

    for cls in (getattr(core, "TyperArgument", None), getattr(core, "TyperOption", None)):
        if cls is not None and hasattr(cls, "display_type_rich"):
            cls.display_type_rich = value_name
            cls.display_type = lambda self, ctx: value_name(self, ctx) or ""
    if hasattr(getattr(core, "TyperArgument", None), "_usage_display_name"):
        core.TyperArgument._usage_display_name = usage_name
