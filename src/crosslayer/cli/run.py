"""``crosslayer run``: the main job, study A end to end (see ``docs/study_a.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from crosslayer.cli._options import option_for
from crosslayer.cli.app import app, console, console_err
from crosslayer.config import RunConfig as R
from crosslayer.errors import CrosslayerError


def _prune(d: dict[str, Any]) -> dict[str, Any]:
    """Drop unset (None) flags, and sections left empty."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _prune(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


def _print_dry_run(cfg: Any) -> None:
    """The resolved config as YAML, then the plan as YAML comments: the output stays a config
    file (``crosslayer run --dry-run > my.yaml``) and the plan is still read on the terminal."""
    # local: start-up cost (a command imports its library code when it runs)
    from io import StringIO

    import yaml
    from rich.console import Console

    from crosslayer.experiments.study_a import default_out
    from crosslayer.plan import plan_run

    console.print(
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="", markup=False
    )
    console.print(f"# run directory: {cfg.out or default_out(cfg)}  (config {cfg.hash()})")
    try:
        plan = plan_run(cfg)
    except CrosslayerError as e:  # the config itself is fine; say why there is no plan
        console.print(f"# no plan: {e}", markup=False, highlight=False, soft_wrap=True)
        console_err.print(f"warning: no plan: {e}", markup=False, highlight=False)
        return
    buf = StringIO()
    Console(file=buf, width=max(console.width, 100) - 2, color_system=None).print(plan.table())
    text = "".join(f"# {line}".rstrip() + "\n" for line in buf.getvalue().splitlines())
    console.print(text + f"# {plan.summary()}", markup=False, highlight=False, soft_wrap=True)


@app.command("run")
def run_command(
    config: Path | None = typer.Option(
        None, "--config", help="YAML or TOML config file (`crosslayer init` writes one)"
    ),
    profile: str | None = option_for(R, "profile", "--profile", default=None),
    model: str | None = option_for(R, "model", "--model", default=None),
    source: str | None = option_for(R, "source", "--source", default=None),
    target: str | None = option_for(R, "target", "--target", default=None),
    sae: str | None = option_for(R, "sae", "--sae", default=None),
    corpus: str | None = option_for(R, "corpus", "--corpus", default=None),
    tokens: int | None = option_for(R, "tokens", "--tokens", default=None, min=100),
    out: str | None = option_for(R, "out", "--out", default=None),
    device: str | None = option_for(R, "device", "--device", default=None),
    model_dtype: str | None = option_for(R, "model_dtype", "--model-dtype", default=None),
    seed: int | None = option_for(R, "seed", "--seed", default=None),
    width: int | None = option_for(R, "sae_training.width", "--width", default=None, min=2),
    target_l0: float | None = option_for(R, "sae_training.target_l0", "--target-l0", default=None),
    arch: str | None = option_for(R, "sae_training.arch", "--arch", default=None),
    set_: list[str] = typer.Option(
        [], "--set", help="any other config key, dotted: --set probes.max_features=500"
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="print the resolved config and the plan (tokens, disk, memory, time); run nothing",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show progress"),
) -> None:
    """Run study A: how much of a late layer and of its SAE features the early layer predicts.

    With no arguments: Gemma 3 270M, the built-in Wikipedia sample, hook_embed →
    blocks.12.hook_resid_post, SAEs trained in the run. The study's own setting, where the
    weights are available locally: --model google/gemma-2-2b --target
    blocks.20.hook_resid_post --sae gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical

    Rerunning the same command resumes: finished stages in the run directory are reused.

    Example: crosslayer run --profile quick --out runs/quick
    """
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer.config import build_config, deep_merge, parse_set

    flags = _prune(
        {
            "model": model,
            "source": source,
            "target": target,
            "sae": sae,
            "corpus": corpus,
            "tokens": tokens,
            "out": out,
            "device": device,
            "model_dtype": model_dtype,
            "seed": seed,
            "sae_training": {"width": width, "target_l0": target_l0, "arch": arch},
        }
    )
    cfg = build_config(profile, config, deep_merge(flags, parse_set(set_)))
    if dry_run:
        _print_dry_run(cfg)
        return
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer.experiments.study_a import run_study_a, summary_table

    results = run_study_a(cfg, progress=progress)
    console.print(summary_table(results))
    out_dir = Path(results["out"])
    console.print(
        f"results: {out_dir / 'results.json'}; plots: {', '.join(results['plots'])} "
        f"({results['timings']['total']:.0f} s)"
    )
    console.print(f"report: {out_dir / 'report.html'}")
