"""The ``crosslayer`` command: a thin layer over the library API.

Each sub-command lives in its own module and registers itself on :data:`app`.
User errors (:class:`~crosslayer.errors.CrosslayerError`) print one line and exit 2.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

from crosslayer.cli.app import app, console_err
from crosslayer.errors import CrosslayerError

# Sub-commands listed first in --help, in this order; any other module in this package
# that is not private registers itself after them.
_ORDER = (
    "run",
    "init",
    "collect",
    "train_sae",
    "eval_sae",
    "layers",
    "contrast",
    "interpret",
    "report",
    "compare",
    "verify",
)


def _register() -> None:
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    found.discard("app")
    for name in [*(n for n in _ORDER if n in found), *sorted(found.difference(_ORDER))]:
        importlib.import_module(f"crosslayer.cli.{name}")


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's usage-error base class; recent typer vendors its own copy of click too."""
    import click

    classes: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        pass
    else:
        classes.append(ClickException)
    return tuple(classes)


def _usage_fix(e: Exception) -> str:
    """``see `crosslayer CMD --help``` for the sub-command the usage error came from."""
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None else "crosslayer"
    return f"see `{path} --help`"


def _aborts() -> tuple[type[Exception], ...]:
    import click
    import typer

    return (click.Abort, typer.Abort)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    _register()
    try:
        app(args=argv, standalone_mode=False)
    except CrosslayerError as e:
        console_err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        console_err.print("interrupted: finished work is kept; run the same command to resume")
        return 130
    except SystemExit as e:
        return int(e.code or 0)
    except _usage_errors() as e:  # a bad flag or value: one line, as for our own errors
        console_err.print(
            f"[bold red]error:[/] {e.format_message()} — {_usage_fix(e)}",  # type: ignore[attr-defined]
            highlight=False,
            soft_wrap=True,
            markup=True,
        )
        return int(e.exit_code)  # type: ignore[attr-defined]
    except _aborts():
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
