"""Where progress goes: two rich consoles, shared by the library and the CLI.

Library code reports progress here (never by importing :mod:`crosslayer.cli`, which sits on
top of the library); the CLI prints results on :data:`console` and errors on
:data:`console_err`. Progress goes to stderr, so ``crosslayer run --dry-run > my.yaml`` and
piped output stay clean.
"""

from __future__ import annotations

from rich.console import Console

console = Console()  # results: tables, paths
console_err = Console(stderr=True)  # progress, warnings, errors


def say(stage: str, message: str) -> None:
    """One progress line: ``<stage> message`` in the house style, on stderr."""
    console_err.print(f"[bold cyan]{stage}[/] {message}", highlight=False)


def warn(message: str) -> None:
    """One warning line on stderr, never wrapped (it names files), whatever ``progress`` is."""
    console_err.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
