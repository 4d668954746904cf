"""``crosslayer run``: the main job, study A end to end (see ``docs/study_a.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from crosslayer.cli.app import app, console, console_err


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
    from io import StringIO

    import yaml
    from rich.console import Console

    from crosslayer.errors import CrosslayerError
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
    profile: str | None = typer.Option(
        None, "--profile", help="default (~5 min on 2 CPU cores) or quick (~2 min)"
    ),
    model: str | None = typer.Option(
        None, "--model", help="gemma-3-270m (default), a .gguf, a local HF dir or a cached HF id"
    ),
    source: str | None = typer.Option(None, "--source", help="early hook (default hook_embed)"),
    target: str | None = typer.Option(
        None, "--target", help="late hook (default: the --sae's hook, else resid_post at 70% depth)"
    ),
    sae: str | None = typer.Option(
        None, "--sae", help="pretrained SAE on the target: Gemma Scope file/dir or release/id"
    ),
    corpus: str | None = typer.Option(None, "--corpus", help="builtin:wiki (default), a path..."),
    tokens: int | None = typer.Option(None, "--tokens", min=100, help="sample tokens collected"),
    out: str | None = typer.Option(
        None, "--out", help="run directory (default runs/study_a-<profile>-<config hash>)"
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N"),
    seed: int | None = typer.Option(None, "--seed", help="seed of split, SAEs, probes, bootstrap"),
    width: int | None = typer.Option(None, "--width", min=2, help="latents of both trained SAEs"),
    target_l0: float | None = typer.Option(
        None, "--target-l0", help="active latents per token of both trained SAEs"
    ),
    arch: str | None = typer.Option(None, "--arch", help="jumprelu or topk"),
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

    from crosslayer.experiments.study_a import run_study_a, summary_table

    results = run_study_a(cfg, progress=progress)
    console.print(summary_table(results))
    out_dir = Path(results["out"])
    console.print(
        f"results: {out_dir / 'results.json'}; plots: {', '.join(results['plots'])} "
        f"({results['timings']['total']:.0f} s)"
    )
    console.print(f"report: {out_dir / 'report.html'}")
