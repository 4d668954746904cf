"""``crosslayer verify``: re-check a store's checksums."""

from __future__ import annotations

from pathlib import Path

import typer

from crosslayer.cli.app import app, console


@app.command("verify")
def verify_command(
    store: Path = typer.Argument(..., help="Store directory written by `crosslayer collect`"),
) -> None:
    """Re-hash every shard file of STORE and report missing or damaged ones.

    Example:

        crosslayer verify runs/demo
    """
    from crosslayer.errors import DataError
    from crosslayer.store import verify_store

    report = verify_store(store)
    bad = [*(f"{f} missing" for f in report.missing), *(f"{f} damaged" for f in report.damaged)]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DataError(
            f"store {store} has {len(bad)} bad file(s): {shown}",
            "delete the listed shard directories and run the same collect command again",
        )
    if not report.complete:
        raise DataError(
            f"store {store} is incomplete ({report.n_shards} shards written so far)",
            "run the same collect command again to finish it",
        )
    console.print(
        f"ok: {store}: {report.n_shards} shards, {report.n_files} files, checksums match",
        highlight=False,
    )
