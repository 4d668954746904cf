"""``crosslayer eval-sae``: explained variance, L0, dead/dense latents and CE loss recovered."""

from __future__ import annotations

from pathlib import Path

from crosslayer.cli._options import option_for
from crosslayer.cli.app import app, console
from crosslayer.errors import CrosslayerError
from crosslayer.stage_configs import EvalSAEConfig as E


@app.command("eval-sae")
def eval_sae_command(
    sae: str = option_for(E, "sae", "--sae"),
    store: Path = option_for(E, "store", "--store"),
    hook: str = option_for(E, "hook", "--hook"),
    model: str = option_for(E, "model", "--model"),
    n_contexts: int = option_for(E, "n_contexts", "--contexts", min=1),
    out: Path = option_for(E, "out", "--out"),
    device: str = option_for(E, "device", "--device"),
) -> None:
    """Evaluate an SAE on a store's held-out tokens (and, with --model, by splicing it in).

    Example: crosslayer eval-sae --sae runs/demo/sae_baseline --store runs/demo/store
    --model gemma-3-270m
    """
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer.fs import atomic_write_json
    from crosslayer.provenance import versions
    from crosslayer.sae import check_against_model, evaluate_sae, load_sae
    from crosslayer.store import open_store

    if out is not None:
        _check_out_file(out)
    acts = open_store(store)
    loaded = load_sae(sae, device=device, hook=hook)  # a bad SAE fails before the model loads
    lm = None
    if model is not None:
        # local: start-up cost (a command imports its library code when it runs)
        from crosslayer.model import load_model
        from crosslayer.model.shape import checked_info

        checked_info(model)  # path, file type, hub: before the weights load
        lm = load_model(model, device=device)
        check_against_model(loaded, lm)
    metrics = evaluate_sae(loaded, acts, lm, hook=hook, n_contexts=n_contexts)
    for key in (
        "hook",
        "n_tokens",
        "explained_variance",
        "fvu",
        "l0",
        "dead_fraction",
        "dense_fraction",
        "ce_loss_recovered",
        "delta_lm_loss",
    ):
        if key in metrics:
            value = metrics[key]
            console.print(
                f"{key:20s} {value:.4f}" if isinstance(value, float) else f"{key:20s} {value}"
            )
    if out is not None:
        atomic_write_json(
            out, {"sae": sae, "store": str(store), "metrics": metrics, "versions": versions()}
        )


def _check_out_file(out: Path) -> None:
    """``--out`` must be a file path that can be written: not a directory, none of its
    parents a file (checked before the SAE is evaluated)."""
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer.fs import check_dir_path

    if out.is_dir():
        raise CrosslayerError(f"--out {out} is a directory", "pass a file path, e.g. metrics.json")
    check_dir_path(out.parent, "--out")
