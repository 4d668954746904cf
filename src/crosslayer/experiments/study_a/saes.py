"""Stage 5: the dictionaries (baseline on the target, residual on the residuals, placebo on
the target less as much random variance), each trained once per seed, and their codes.

Seed ``k`` of a dictionary trains with ``seed + k`` and lives in ``saes/<name>`` (k = 0:
what the rest of the run reads) or ``saes/<name>_seed<k>`` (:func:`crosslayer.rundir.
seed_name`). Every dictionary and seed gets the same settings and the same training tokens
(:func:`sae_train_config`); only what they read differs, and the residual and placebo SAEs
record it in their ``cfg.json`` (``crosslayer_input``), so that loading one on the raw hook
is an error (:func:`crosslayer.sae.load.check_against_model`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from crosslayer.experiments.study_a.placebo import PlaceboRemoval, fit_placebo
from crosslayer.experiments.study_a.run import JsonFile, Run, Written
from crosslayer.rundir import STAGES, seed_name
from crosslayer.sae import SAETrainConfig, evaluate_sae, load_sae, train_sae

if TYPE_CHECKING:
    from sae_lens import SAE


def sae_train_config(run: Run, seed_index: int = 0) -> SAETrainConfig:
    """The ONE training config every dictionary gets (same width, sparsity, tokens), with
    seed ``run.cfg.seed + seed_index``."""
    c = run.cfg.sae_training
    return SAETrainConfig(
        arch=c.arch,
        width=c.width,
        target_l0=c.target_l0,
        epochs=c.epochs,
        batch_size=c.batch_size,
        lr=c.lr,
        seed=run.cfg.seed + seed_index,
        device=run.cfg.device,
    )


def dictionary_reads(source: str, target: str) -> dict[str, dict[str, Any]]:
    """The ``crosslayer_input`` metadata of the residual and placebo SAEs (the baseline reads
    the target's activations and records none)."""
    residual = f"{target} - ridge({source})"
    return {
        "residual": {
            "kind": "residual",
            "source_hook": source,
            "target_hook": target,
            "transcoder": "ridge",
            "transcoder_file": f"{STAGES}/transcoder.npz",
            "definition": residual,
        },
        "placebo": {
            "kind": "placebo",
            "source_hook": source,
            "target_hook": target,
            "transcoder": "ridge",
            "transcoder_file": f"{STAGES}/transcoder.npz",
            "placebo_file": f"{STAGES}/placebo.npz",
            "definition": f"{target} - M ({residual}), M in {STAGES}/placebo.npz",
        },
        "residual_adam": {
            "kind": "residual",
            "source_hook": source,
            "target_hook": target,
            "transcoder": "adam (the seed study's recipe, refitted; not saved)",
            "definition": f"{target} - adam({source})",
        },
    }


def train_dictionaries(
    run: Run,
    target: str,
    model_identity: dict[str, Any],
    inputs: dict[str, np.ndarray],
    *,
    reads: dict[str, dict[str, Any]] | None = None,
    seeds: int | None = None,
) -> dict[str, list[SAE[Any]]]:
    """Train (or reload) every dictionary of ``inputs`` once per seed: ``{name: [seed 0, …]}``.

    ``inputs``: what each dictionary trains on (train split); ``reads[name]``: its
    ``crosslayer_input`` metadata (:func:`dictionary_reads`); ``seeds``: default
    ``sae_training.seeds``. Each SAE is its own checkpoint (a rerun trains only the missing).
    """
    n_seeds = run.cfg.sae_training.seeds if seeds is None else seeds
    reads = reads or {}
    out: dict[str, list[SAE[Any]]] = {}
    for name, x in inputs.items():
        out[name] = [
            _train_one(run, name, k, x, target, model_identity, reads.get(name))
            for k in range(n_seeds)
        ]
    return out


def _train_one(
    run: Run,
    name: str,
    k: int,
    x: np.ndarray,
    target: str,
    model_identity: dict[str, Any],
    reads: dict[str, Any] | None,
) -> SAE[Any]:
    label = seed_name(name, k)
    path = run.dirs.sae(label)
    what = "target activations" if reads is None else f"{reads['kind']} inputs"
    # train_sae writes the directory atomically, cfg.json included: its presence is the mark
    done: Written[SAE[Any]] = Written(
        path / "cfg.json", partial(load_sae, path, device=run.cfg.device)
    )
    return run.cached(
        done,
        partial(
            train_sae,
            torch.from_numpy(x),
            sae_train_config(run, k),
            out=path,
            hook=target,
            model_identity=model_identity,
            reads=reads,
            progress=run.progress,
        ),
        (f"sae_{label}", f"training the {name} SAE (seed {k}) on {len(x):,} {what}"),
    )


def train_saes(
    run: Run,
    target: str,
    model_identity: dict[str, Any],
    inputs: dict[str, np.ndarray],
    *,
    reads: dict[str, dict[str, Any]] | None = None,
) -> dict[str, SAE[Any]]:
    """Seed 0 of each dictionary of ``inputs`` (:func:`train_dictionaries` with one seed)."""
    saes = train_dictionaries(run, target, model_identity, inputs, reads=reads, seeds=1)
    return {name: s[0] for name, s in saes.items()}


@dataclass(frozen=True)
class PlaceboFile:
    """Checkpoint of the placebo removal (``stages/placebo.npz``)."""

    path: Path

    def done(self) -> bool:
        return self.path.is_file()

    def files(self) -> list[Path]:
        return [self.path]

    def load(self) -> PlaceboRemoval:
        return PlaceboRemoval.load(self.path)

    def save(self, value: PlaceboRemoval) -> PlaceboRemoval:
        value.save(self.path)  # atomic: a killed stage leaves no placebo.npz
        return value


def placebo_stage(run: Run, Y_train: np.ndarray, R_train: np.ndarray) -> PlaceboRemoval:
    """Fit (or reload) the placebo removal on the train split (seeded by the run's seed)."""
    return run.cached(
        PlaceboFile(run.dirs.placebo),
        partial(fit_placebo, Y_train, R_train, seed=run.cfg.seed),
        ("placebo", "fitting the placebo removal (as much variance as the transcoder's)"),
    )


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
