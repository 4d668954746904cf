"""``crosslayer compare``: two or more study A runs side by side in one HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from crosslayer.cli.app import app, console, console_err


@app.command("compare")
def compare_command(
    runs: list[Path] = typer.Argument(..., help="Two or more study A run directories"),
    out: Path = typer.Option(..., "--out", help="Directory for compare.html and its tables"),
    features: bool = typer.Option(
        True,
        "--features/--no-features",
        help="Compare per-feature score distributions (needs the same SAEs in every run)",
    ),
) -> None:
    """Compare study A runs (seeds, corpora, layers, models): headline figures with CIs, the
    transcoder and depth sweep, the decomposition and emergence when present, per-feature
    score distributions. Writes OUT/compare.html and OUT/headline.parquet (+ .csv).

    Example: crosslayer compare runs/seed0 runs/seed1 --out runs/compare-seeds
    """
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer.runs_compare import REPORT_NAME, compare_runs

    with console_err.status(f"comparing {len(runs)} runs"):
        compare_runs(runs, out, per_feature=features)
    console.print(f"wrote {out / REPORT_NAME}")
