"""``crosslayer init``: write an annotated example config for ``crosslayer run --config``."""

from __future__ import annotations

from pathlib import Path

import typer

from crosslayer.cli.app import app, console
from crosslayer.errors import CrosslayerError


@app.command("init")
def init_command(
    path: Path = typer.Argument(
        Path("crosslayer.yaml"), help="file to write: *.yaml/*.yml or *.toml"
    ),
    profile: str = typer.Option("default", "--profile", help="default or quick"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write every config key of a profile, each with its meaning, to PATH.

    Example: crosslayer init my_run.yaml --profile quick && crosslayer run --config my_run.yaml
    """
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer import fs
    from crosslayer.config import PROFILES, example_config

    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise CrosslayerError(f"{path} is neither YAML nor TOML", "name it *.yaml or *.toml")
    if profile not in PROFILES:
        raise CrosslayerError(f"unknown profile {profile!r}", f"use one of: {', '.join(PROFILES)}")
    if path.exists() and not force:
        raise CrosslayerError(f"{path} already exists", "pass --force to overwrite it")
    text = example_config(profile, "toml" if suffix == ".toml" else "yaml")
    fs.atomic_write_bytes(path, text.encode())
    console.print(f"wrote {path}; run it with: crosslayer run --config {path}")
