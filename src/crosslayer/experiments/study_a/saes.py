"""Stage 5: the two SAEs (baseline on the target, residual on the residuals), and their codes."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from crosslayer.experiments.study_a.run import JsonFile, Run, Written
from crosslayer.sae import SAETrainConfig, evaluate_sae, load_sae, train_sae

if TYPE_CHECKING:
    from sae_lens import SAE


def sae_train_config(run: Run) -> SAETrainConfig:
    """The ONE training config both SAEs get (same width, sparsity, tokens, seed)."""
    c = run.cfg.sae_training
    return SAETrainConfig(
        arch=c.arch,
        width=c.width,
        target_l0=c.target_l0,
        epochs=c.epochs,
        batch_size=c.batch_size,
        lr=c.lr,
        seed=run.cfg.seed,
        device=run.cfg.device,
    )


def train_saes(
    run: Run, target: str, model_identity: dict[str, Any], inputs: dict[str, np.ndarray]
) -> dict[str, SAE[Any]]:
    """Train (or reload) one SAE per entry of ``inputs`` with :func:`sae_train_config`."""
    cfg = sae_train_config(run)
    saes = {}
    for name, x in inputs.items():
        path = run.dirs.sae(name)
        what = "target activations" if name == "baseline" else "residuals"
        # train_sae writes the directory atomically, cfg.json included: its presence is the mark
        done: Written[SAE[Any]] = Written(
            path / "cfg.json", partial(load_sae, path, device=run.cfg.device)
        )
        saes[name] = run.cached(
            done,
            partial(
                train_sae,
                torch.from_numpy(x),
                cfg,
                out=path,
                hook=target,
                model_identity=model_identity,
                progress=run.progress,
            ),
            (f"sae_{name}", f"training the {name} SAE on {len(x):,} {what}"),
        )
    return saes


@torch.no_grad()
def encode_sparse(sae: SAE[Any], x: np.ndarray, batch_size: int = 2048) -> sp.csc_matrix:
    """SAE feature activations ``[n, d_sae]`` as a sparse CSC matrix (columns are features)."""
    rows, cols, vals = [], [], []
    device = sae.W_enc.device
    for start in range(0, len(x), batch_size):
        f = sae.encode(torch.from_numpy(x[start : start + batch_size]).to(device)).float().cpu()
        r, c = torch.nonzero(f, as_tuple=True)
        rows.append((r + start).numpy())
        cols.append(c.numpy())
        vals.append(f[r, c].numpy())
    shape = (len(x), int(sae.cfg.d_sae))
    coo = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape
    )
    return coo.tocsc()


def sae_report(run: Run, name: str, sae: SAE[Any], x_heldout: np.ndarray) -> dict[str, Any]:
    """Held-out reconstruction and sparsity of one SAE, with its shape and training config."""

    def compute() -> dict[str, Any]:
        meta = sae.cfg.metadata
        return {
            "d_in": int(sae.cfg.d_in),
            "width": int(sae.cfg.d_sae),
            "architecture": type(sae).__name__,
            "hook_name": meta.hook_name,
            "training_tokens": getattr(meta, "training_tokens", None),
            "heldout": evaluate_sae(sae, torch.from_numpy(x_heldout)),
        }

    return run.cached(JsonFile(run.dirs.sae_report(name)), compute)
