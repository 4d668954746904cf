"""``crosslayer interpret``: top SAE latents on PARAREL facts, and what they mean."""

from __future__ import annotations

from pathlib import Path

import typer

from crosslayer.cli._options import option_for
from crosslayer.cli.app import app, console
from crosslayer.errors import CrosslayerError
from crosslayer.stage_configs import InterpretConfig as Interp


@app.command("interpret")
def interpret_command(
    facts: Path = option_for(Interp, "facts", "--facts"),
    out: Path = typer.Option(..., "--out", help="Output directory (results.json, PNGs, HTML)"),
    model: str = typer.Option("gemma-3-270m", "--model", help="Model alias, path or HF id"),
    relation: str | None = option_for(Interp, "relation", "--relation"),
    groups: int = option_for(Interp, "n_groups", "--groups", min=1),
    layers: str = option_for(Interp, "layers", "--layers", default=""),
    sae: list[str] = typer.Option([], "--sae", help="LAYER=SAE spec (repeatable)"),
    sae_dir: Path | None = typer.Option(None, "--sae-dir", help="Gemma Scope clone directory"),
    sae_on_residual: bool = option_for(Interp, "sae_on_residual", "--sae-on-residual"),
    top_k: int = option_for(Interp, "top_k", "--top-k", min=1),
    before: bool = option_for(Interp, "before", "--before"),
    store: Path | None = option_for(Interp, "store", "--store"),
    selection: str = option_for(Interp, "selection", "--selection"),
    n_permutations: int = option_for(Interp, "n_permutations", "--permutations", min=10),
    n_null_draws: int = option_for(Interp, "n_null_draws", "--null-draws", min=10),
    logit_lens: bool = option_for(Interp, "logit_lens", "--logit-lens/--no-logit-lens"),
    lens_tokens: int = option_for(Interp, "lens_tokens", "--lens-tokens", min=1),
    lens_translator: bool = option_for(Interp, "lens_translator", "--lens-translator"),
    seed: int = option_for(Interp, "seed", "--seed"),
) -> None:
    """Latents per fact group (contrastive by default, raw top-k beside) at the first answer
    token, their promotion shares against a permutation and a density-matched null;
    topic/prompt/layer cosine maps; a logit lens per block; per latent: promoted tokens
    (through the final norm), density, contexts, Neuronpedia link.

    Example: crosslayer interpret --out runs/interpret --facts ../shared/data/pararel/data_nm.json
    --relation P101 --sae 12=runs/demo/sae_baseline
    """
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer.experiments.interpret import run_interpret, summary_lines
    from crosslayer.experiments.pararel import read_facts
    from crosslayer.experiments.reps import check_inputs, parse_layers, parse_sae_args
    from crosslayer.fs import check_dir_path
    from crosslayer.model import load_model

    n_read = len(read_facts(facts, relation=relation, n_groups=groups))  # before the model loads
    if selection not in ("contrastive", "top"):
        raise CrosslayerError(f"unknown --selection {selection!r}", "use contrastive or top")
    if logit_lens and lens_translator and n_read < 5:
        raise CrosslayerError(
            f"the translator needs at least 5 fact groups, got {n_read}",
            "give more groups, or run without --lens-translator",
        )
    check_dir_path(out)
    saes = sae_dir if sae_dir else parse_sae_args(sae)
    if not saes:
        raise CrosslayerError("interpret needs SAEs", "pass --sae LAYER=SPEC or --sae-dir CLONE")
    blocks = parse_layers(layers)
    check_inputs(model, blocks, saes, store)
    lm = load_model(model)
    result = run_interpret(
        lm, facts, saes, relation=relation, n_groups=groups, layers=blocks,
        top_k=top_k, before=before, sae_on_residual=sae_on_residual, store=store, out=out,
        selection=selection, n_permutations=n_permutations,  # type: ignore[arg-type]
        n_null_draws=n_null_draws, logit_lens=logit_lens, lens_tokens=lens_tokens,
        lens_translator=lens_translator, seed=seed,
    )  # fmt: skip
    for line in summary_lines(result):
        console.print(line, highlight=False)
    console.print(f"wrote {out}/results.json, plots and latents.html")
