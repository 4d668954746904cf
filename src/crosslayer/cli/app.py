"""The shared Typer application and consoles; sub-command modules import from here."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="crosslayer",
    help="How much of a late layer is predictable from an early layer, and how much is "
    "computed on the way.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
console_err = Console(stderr=True)
