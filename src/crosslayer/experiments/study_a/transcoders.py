"""Stages 3-4: the transcoders (ridge, the study's Adam recipe, an MLP) and the residuals."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crosslayer import fs
from crosslayer.experiments.study_a.inputs import Data
from crosslayer.experiments.study_a.run import Run, sample_rows
from crosslayer.metrics import r2_global_mean
from crosslayer.model.hooks import hook_depth
from crosslayer.store import open_store
from crosslayer.transcoder import (
    DEFAULT_ALPHAS,
    TRANSCODER_CONFIG,
    TRANSCODER_WEIGHTS,
    AffineTranscoder,
    MLPTranscoder,
)


@dataclass
class Transcoders:
    """The ridge transcoder the residuals come from, and the metrics of every transcoder."""

    ridge: AffineTranscoder
    metrics: dict[str, Any]


@dataclass(frozen=True)
class TranscoderFiles:
    """Checkpoint of the transcoder stage: the ridge map as a reusable artefact
    (``transcoder/``: cfg.json + model.safetensors, :meth:`AffineTranscoder.save_pretrained`)
    and all metrics (``stages/transcoder.json``).

    The JSON is written last, so both present means the stage finished. A run directory from
    before the artefact existed (only ``stages/transcoder.npz``) is not done: the stage refits.
    """

    artefact: Path
    metrics: Path
    device: str
    source_hook: str
    target_hook: str
    model: dict[str, Any]
    config_hash: str

    def done(self) -> bool:
        return (
            (self.artefact / TRANSCODER_CONFIG).is_file()
            and (self.artefact / TRANSCODER_WEIGHTS).is_file()
            and self.metrics.is_file()
        )

    def files(self) -> list[Path]:
        return [
            self.metrics,
            self.artefact / TRANSCODER_CONFIG,
            self.artefact / TRANSCODER_WEIGHTS,
        ]

    def load(self) -> Transcoders:
        ridge = AffineTranscoder.from_pretrained(self.artefact, device=self.device)
        return Transcoders(ridge, json.loads(self.metrics.read_text()))

    def save(self, value: Transcoders) -> Transcoders:
        value.ridge.save_pretrained(
            self.artefact,
            source_hook=self.source_hook,
            target_hook=self.target_hook,
            model=self.model,
            extra={"run_config_hash": self.config_hash},
        )
        value.metrics = fs.jsonable(value.metrics)
        fs.atomic_write_json(self.metrics, value.metrics)
        # hand back what a rerun will load: the reloaded artefact (hooks and model included)
        return Transcoders(self.load().ridge, value.metrics)


def fit_transcoders(run: Run, data: Data) -> Transcoders:
    """Ridge transcoder (kept) plus the study's Adam recipe and an MLP, all on train only.

    The ridge strength is chosen by generalised cross-validation on the train split, so
    held-out tokens play no part in fitting and their scores are honest. The ridge map is
    saved as ``RUN/transcoder/`` with the hooks and the model it belongs to, read from the
    run's store (its manifest names the model and ``[source, target]``).
    """
    manifest = open_store(run.dirs.store).manifest
    hooks = sorted(manifest["hooks"], key=hook_depth)  # the main store holds exactly these two
    source, target = hooks[0], hooks[-1]
    files = TranscoderFiles(
        run.dirs.transcoder,
        run.dirs.transcoder_metrics,
        run.cfg.device,
        source_hook=source,
        target_hook=target,
        model=dict(manifest["config"]["model"]),
        config_hash=run.cfg.hash(),
    )
    return run.cached(files, lambda: _fit_all(run, data))


def _fit_all(run: Run, data: Data) -> Transcoders:
    cfg, seed, device = run.cfg.transcoder, run.cfg.seed, run.cfg.device
    alphas = tuple(cfg.alphas) if cfg.alphas else DEFAULT_ALPHAS

    # One checkpoint for all three (they are scored together), each timed on its own.
    with run.stage("transcoder", "fitting the ridge transcoder (train split only)"):
        ridge = AffineTranscoder(alphas, device=device)
        ridge.fit(data.X_train, data.Y_train)  # no held-out data given: alpha by GCV
        metrics: dict[str, Any] = {
            "ridge": _metrics(ridge, data)
            | {"alpha": ridge.alpha_, "alpha_criterion": ridge.alpha_criterion_},
        }
    if cfg.study_recipe:
        sample = sample_rows(len(data.X_train), cfg.adam_tokens, seed)
        with run.stage("transcoder_adam", f"fitting the study's Adam recipe on {len(sample):,}"):
            adam = AffineTranscoder(
                solver="adam",
                lr=cfg.adam_lr,
                epochs=cfg.adam_epochs,
                batch_size=cfg.adam_batch_size,
                seed=seed,
                device=device,
            ).fit(data.X_train[sample], data.Y_train[sample])
            metrics["study_recipe"] = _metrics(adam, data) | {
                "n_fit_tokens": len(sample),
                "lr": cfg.adam_lr,
                "epochs": cfg.adam_epochs,
                "batch_size": cfg.adam_batch_size,
            }
    if cfg.mlp:
        with run.stage("transcoder_mlp", f"fitting the MLP transcoder ({cfg.mlp_hidden} hidden)"):
            mlp = MLPTranscoder(
                cfg.mlp_hidden,
                max_epochs=cfg.mlp_max_epochs,
                alphas=alphas,
                seed=seed,
                device=device,
            ).fit(data.X_train, data.Y_train)  # early stopping on a slice of train
            metrics["mlp"] = _metrics(mlp, data) | {
                "hidden": cfg.mlp_hidden,
                "epochs_run": len(mlp.val_losses_) - 1,
            }
    return Transcoders(ridge, metrics)


def _metrics(model: AffineTranscoder | MLPTranscoder, data: Data) -> dict[str, Any]:
    """Held-out metrics (ours) and train metrics (where the study measured), per-dim R² too."""
    heldout = model.evaluate(data.X_heldout, data.Y_heldout)
    train = model.evaluate(data.X_train, data.Y_train)
    return {
        "heldout": heldout.summary() | {"r2_per_dim": heldout.r2_per_dim},
        "train": train.summary(),
    }


def mean_only_metrics(data: Data) -> dict[str, Any]:
    """``transcoder.mean_only``: the per-dimension train means as the prediction, scored with
    the seed study's global-mean R² on train and held-out. Much of that R² is the spread of
    the dimensions' means (outlier dimensions), which this predictor already captures."""
    means = torch.from_numpy(np.asarray(data.Y_train, dtype=np.float64).mean(0))

    def score(Y: np.ndarray) -> float:  # every token predicted by the same means
        return r2_global_mean(Y, means.expand(len(Y), -1))

    return {
        "definition": "predict every token by the per-dimension train means; R² = 1 - "
        "Σ_ij (y_ij - mean_j)² / Σ_ij (y_ij - m)², m one scalar mean over all entries",
        "train": {"r2_global_mean": score(data.Y_train)},
        "heldout": {"r2_global_mean": score(data.Y_heldout)},
    }


def residuals(transcoder: AffineTranscoder, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """``Y - transcoder(X)``: the part of the target the affine map does not predict."""
    return (Y - transcoder.predict(X)).astype(np.float32)
