"""``crosslayer train-sae``: train a JumpReLU or TopK SAE on one hook of an activation store."""

from __future__ import annotations

from pathlib import Path

import typer

from crosslayer.cli._options import option_for
from crosslayer.cli.app import app, console
from crosslayer.errors import CrosslayerError
from crosslayer.stage_configs import SAETrainConfig as T


@app.command("train-sae")
def train_sae_command(
    store: Path = typer.Option(
        ..., "--store", help="Activation store directory (crosslayer collect)"
    ),
    hook: str = typer.Option(
        ..., "--hook", help="Hook to train on, e.g. blocks.12.hook_resid_post"
    ),
    out: Path = typer.Option(
        None, "--out", help="SAE folder (default: STORE/saes/HOOK-ARCH-WIDTH)"
    ),
    width: int = option_for(T, "width", "--width"),
    arch: str = option_for(T, "arch", "--arch"),
    target_l0: float = option_for(T, "target_l0", "--target-l0"),
    epochs: int = option_for(T, "epochs", "--epochs"),
    tokens: int = option_for(T, "n_tokens", "--tokens"),
    batch_size: int = option_for(T, "batch_size", "--batch-size"),
    lr: float = option_for(T, "lr", "--lr"),
    seed: int = option_for(T, "seed", "--seed"),
    device: str = option_for(T, "device", "--device", default="auto"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar"),
) -> None:
    """Train an SAE with sae-lens's SAETrainer; rerun the same command to resume after a crash.

    Example: crosslayer train-sae --store runs/demo --hook blocks.12.hook_resid_post
    --width 4096 --arch jumprelu --target-l0 64

    Data parallel over N processes (GPUs, or CPU processes), same result up to float
    rounding; each step's batch is split across them:

        torchrun --nproc-per-node N -m crosslayer train-sae ...
    """
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer import distributed
    from crosslayer.fs import check_dir_path
    from crosslayer.sae import train_sae
    from crosslayer.sae.train import parse_train_config
    from crosslayer.store import open_store

    if arch not in ("jumprelu", "topk"):
        raise CrosslayerError(f"unknown architecture {arch!r}", "use --arch jumprelu or topk")
    cfg = {
        "arch": arch,
        "width": width,
        "target_l0": target_l0,
        "epochs": epochs,
        "n_tokens": tokens,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "device": device,
    }
    parse_train_config(cfg)  # every setting checked before the store is read
    if out is not None:
        check_dir_path(out, itself=False)
    acts = open_store(store)
    out = out or store / "saes" / f"{hook}-{arch}-{width}"
    with distributed.session():
        sae = train_sae(acts, cfg, out, hook=hook, overwrite=overwrite, progress=progress)
        if distributed.rank() != 0:  # rank 0 reports for all
            return
    meta = sae.cfg.metadata
    console.print(
        f"saved {out}  (d_in {sae.cfg.d_in}, {sae.cfg.d_sae} latents, "
        f"training L0 {meta.l0:.1f}, dead {meta.num_dead_features})"
    )
    console.print(f"evaluate: crosslayer eval-sae --sae {out} --store {store}")
