"""``crosslayer verify``: re-check a store's or a run's files against their checksums."""

from __future__ import annotations

from pathlib import Path

import typer

from crosslayer.cli.app import app, console
from crosslayer.errors import DataError


@app.command("verify")
def verify_command(
    path: Path = typer.Argument(
        ...,
        metavar="STORE_OR_RUN",
        help="Store directory (`crosslayer collect --out`) or run directory (`crosslayer run`)",
    ),
) -> None:
    """Check every shard, SAE and result file of STORE_OR_RUN; name what is missing or damaged.

    A store is re-hashed shard by shard against its manifest. A run directory is checked
    artefact by artefact (its stores, SAEs, config.json, results.json, plots, report.html,
    and the checksums.json the run wrote last); one line per artefact is printed. Exit code
    2 with one error line if anything is bad.

    Examples:

        crosslayer verify runs/demo

        crosslayer verify runs/study_a-default-1a2b3c4d
    """
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer.verify import verify_path

    report = verify_path(path)
    if report.kind == "run":
        for artefact in report.artefacts:
            console.print(artefact.line(), highlight=False, markup=False, soft_wrap=True)
    if not report.ok:
        raise DataError(report.problem(), report.fix())
    console.print(f"ok: {report.summary()}", highlight=False, markup=False, soft_wrap=True)
