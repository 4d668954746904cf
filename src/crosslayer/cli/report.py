"""``crosslayer report``: one self-contained report.html for a run directory."""

from __future__ import annotations

from pathlib import Path

import typer

from crosslayer.cli.app import app, console, console_err
from crosslayer.errors import CrosslayerError


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="Run directory (crosslayer run / layers / ...)"),
    out: Path | None = typer.Option(
        None, "--out", help="Output file (default RUN_DIR/report.html)"
    ),
    model: str | None = typer.Option(
        None, "--model", help="Model for the latent dashboards (default: the run's model)"
    ),
    no_model: bool = typer.Option(
        False, "--no-model", help="Skip loading the model: dashboards without promoted tokens"
    ),
) -> None:
    """Write one self-contained report.html: every experiment that ran, its plots, the
    studies' figures beside ours, latent dashboards, configuration and versions.

    Example: crosslayer report runs/study_a-quick-1a2b3c4d --no-model
    """
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer.report import find_sections, write_report

    sections = find_sections(run_dir)  # fails early on a directory with no results
    lm = None
    spec = model or next((s.results.get("model", {}).get("spec") for s in sections
                          if s.kind == "study_a"), None)  # fmt: skip
    if spec and not no_model:
        # local: start-up cost (a command imports its library code when it runs)
        from crosslayer.model import load_model

        with console_err.status(f"loading {spec} for the latent dashboards"):
            try:
                lm = load_model(spec, device="cpu")
            except CrosslayerError as e:
                console_err.print(f"[yellow]warning:[/] {e.problem}; dashboards without the model")
    with console_err.status("writing the report"):
        path = write_report(run_dir, model=lm, out=out)
    console.print(f"wrote {path}")
