"""``crosslayer layers``: cosine maps across layers and tokens, corpus CKA and depth curve."""

from __future__ import annotations

from pathlib import Path

import typer

from crosslayer.cli._options import option_for
from crosslayer.cli.app import app, console
from crosslayer.stage_configs import LayersConfig as L


@app.command("layers")
def layers_command(
    out: Path = typer.Option(..., "--out", help="Output directory (results.json + PNGs)"),
    model: str = typer.Option("gemma-3-270m", "--model", help="Model alias, path or HF id"),
    prompt: list[str] = option_for(L, "prompts", "--prompt", default=[]),
    layers: str = option_for(L, "layers", "--layers", default=""),
    sae: list[str] = typer.Option([], "--sae", help="LAYER=SAE spec (repeatable)"),
    sae_dir: Path | None = typer.Option(None, "--sae-dir", help="Gemma Scope clone directory"),
    sae_on_residual: bool = option_for(L, "sae_on_residual", "--sae-on-residual"),
    spaces: list[str] = option_for(L, "spaces", "--space", default=[]),
    store: Path | None = option_for(L, "store", "--store"),
    max_tokens: int | None = option_for(L, "max_tokens", "--max-tokens", min=2),
    sae_max_tokens: int = option_for(L, "sae_max_tokens", "--sae-max-tokens", min=2),
    n_boot: int = option_for(L, "n_boot", "--n-boot", min=1),
    seed: int = option_for(L, "seed", "--seed"),
) -> None:
    """Layer x layer cosine per token and token x token per layer, on residuals and SAE latents,
    per representation space (centred by default); with --store, linear CKA between layers (raw
    and standardised, 95% bootstrap CI over contexts) and the embedding depth curve.

    Example: crosslayer layers --out runs/layers --layers 0,6,12,17 --store runs/demo/store
    """
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer.experiments.layers import DEFAULT_PROMPTS, run_layers, summary_lines
    from crosslayer.experiments.reps import check_inputs, parse_layers, parse_sae_args
    from crosslayer.experiments.spaces import DEFAULT_SPACES, check_spaces
    from crosslayer.fs import check_dir_path
    from crosslayer.model import load_model

    check_dir_path(out)  # fail before the model loads
    blocks, saes = parse_layers(layers), sae_dir if sae_dir else (parse_sae_args(sae) or None)
    space_list = check_spaces(spaces or DEFAULT_SPACES)
    check_inputs(model, blocks, saes, store)
    lm = load_model(model)
    result = run_layers(
        lm, prompt or list(DEFAULT_PROMPTS), layers=blocks, saes=saes,
        sae_on_residual=sae_on_residual, spaces=space_list, store=store, max_tokens=max_tokens,
        sae_max_tokens=sae_max_tokens, n_boot=n_boot, seed=seed, out=out,
    )  # fmt: skip
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(f"wrote {out}/results.json and plots")
