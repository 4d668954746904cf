"""``crosslayer contrast``: are direct answers closer to the question than evasive ones?"""

from __future__ import annotations

from pathlib import Path

import typer

from crosslayer.cli._options import option_for
from crosslayer.cli.app import app, console
from crosslayer.errors import CrosslayerError
from crosslayer.stage_configs import ContrastConfig as K


@app.command("contrast")
def contrast_command(
    out: Path = typer.Option(..., "--out", help="Output directory (results.json + PNGs)"),
    items: str = option_for(K, "items", "--items"),
    model: str = typer.Option("gemma-3-270m", "--model", help="Model alias, path or HF id"),
    layers: str = option_for(K, "layers", "--layers", default=""),
    sae: list[str] = typer.Option([], "--sae", help="LAYER=SAE spec (repeatable)"),
    sae_dir: Path | None = typer.Option(None, "--sae-dir", help="Gemma Scope clone directory"),
    sae_on_residual: bool = option_for(K, "sae_on_residual", "--sae-on-residual"),
    spaces: list[str] = option_for(K, "spaces", "--space", default=[]),
    store: Path | None = option_for(K, "store", "--store"),
    alpha: float = option_for(K, "alpha", "--alpha"),
    seed: int = option_for(K, "seed", "--seed"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar"),
) -> None:
    """Per layer and representation space: cos(q, direct) - cos(q, evasive) and the match
    effect (minus the same against other items' questions) with bootstrap CI, Wilcoxon p, dz,
    paired AUROC, and whether the cosine adds to PMI, the unconditional log-likelihood and the
    answer length.

    Example: crosslayer contrast --out runs/contrast --layers 0-17
    """
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer.experiments.contrast import read_items, run_contrast, summary_lines
    from crosslayer.experiments.reps import check_inputs, parse_layers, parse_sae_args
    from crosslayer.experiments.spaces import DEFAULT_SPACES, check_spaces
    from crosslayer.fs import check_dir_path
    from crosslayer.model import load_model

    if not 0 < alpha < 1:
        raise CrosslayerError(f"--alpha {alpha:g} is not a significance level", "use 0 < alpha < 1")
    read_items(items)  # a bad file fails before the model loads
    check_dir_path(out)
    blocks, saes = parse_layers(layers), sae_dir if sae_dir else (parse_sae_args(sae) or None)
    space_list = check_spaces(spaces or DEFAULT_SPACES)
    check_inputs(model, blocks, saes, store)
    lm = load_model(model)
    result = run_contrast(
        lm, items, layers=blocks, saes=saes, sae_on_residual=sae_on_residual, spaces=space_list,
        store=store, alpha=alpha, seed=seed, out=out, progress=progress,
    )  # fmt: skip
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(f"wrote {out}/results.json and plots")
