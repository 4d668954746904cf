"""The shared Typer application; sub-command modules register themselves on :data:`app`.

The consoles live in :mod:`crosslayer.console` (the library prints progress there too) and are
re-exported here for the sub-commands.
"""

from __future__ import annotations

import typer

from crosslayer.console import console, console_err

__all__ = ["app", "console", "console_err"]

app = typer.Typer(
    name="crosslayer",
    help="How much of a late layer is predictable from an early layer, and how much is "
    "computed on the way.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
