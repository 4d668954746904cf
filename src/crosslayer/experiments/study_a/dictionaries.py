"""Stages 5 and 7b together: fit the placebo, train every dictionary once per seed, score them.

One call for the pipeline (:func:`run_dictionaries`); each part is its own checkpoint
(``stages/placebo.npz``, ``saes/<name>[_seed<k>]/``, ``stages/docstats_<sae>.npz``,
``stages/removals.json``), so a rerun redoes only what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from crosslayer.experiments.study_a.comparison import (
    SCORE_FEATURES,
    ScoredDictionary,
    removals_stage,
    score_dictionaries,
    study_recipe_residuals,
)
from crosslayer.experiments.study_a.inputs import Data, Hooks
from crosslayer.experiments.study_a.placebo import PlaceboRemoval
from crosslayer.experiments.study_a.run import Run
from crosslayer.experiments.study_a.saes import dictionary_reads, placebo_stage, train_dictionaries
from crosslayer.store import ActivationStore

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass
class Dictionaries:
    """Every trained dictionary (per seed), the placebo removal, the scores and removals."""

    saes: dict[str, list[SAE[Any]]]  # name -> [seed 0, seed 1, ...]
    placebo: PlaceboRemoval | None
    inputs: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (train, held-out) it reads
    scored: dict[str, list[ScoredDictionary]]
    removals: dict[str, Any]

    def seed0(self, names: tuple[str, ...] = ("baseline", "residual")) -> dict[str, SAE[Any]]:
        """Seed 0 of ``names``: what the per-feature stage probes."""
        return {n: self.saes[n][0] for n in names if n in self.saes}


def run_dictionaries(
    run: Run,
    hooks: Hooks,
    model_identity: dict[str, Any],
    data: Data,
    R: tuple[np.ndarray, np.ndarray],
    store: ActivationStore,
    *,
    placebo: bool = True,
    adam: bool = False,
    fold_ids: np.ndarray | None = None,
    max_features: int | None = SCORE_FEATURES,
) -> Dictionaries:
    """Baseline (target), residual (``R``) and, with ``placebo``, placebo dictionaries, each
    trained ``sae_training.seeds`` times; scored on every train and held-out token (rows in
    the order train then held-out, as ``data``); removals described.

    ``adam``: also a dictionary on the residual of the seed study's Adam recipe
    (``residual_adam``; needs ``transcoder.study_recipe``): the same comparison for the
    study's residual, which explains its small gap. ``fold_ids``: the folds of those rows
    (default: the run's one fold rule, ``features.run_folds``); ``max_features``: scorable
    features scored per SAE (a seeded sample).
    """
    inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "baseline": (data.Y_train, data.Y_heldout),
        "residual": R,
    }
    removal = None
    if placebo:
        removal = placebo_stage(run, data.Y_train, R[0])
        inputs["placebo"] = (
            removal.transform(data.Y_train, R[0]),
            removal.transform(data.Y_heldout, R[1]),
        )
    study = study_recipe_residuals(run, data) if adam else None
    if study is not None:
        inputs["residual_adam"] = study
    saes = train_dictionaries(
        run,
        hooks.target,
        model_identity,
        {name: x[0] for name, x in inputs.items()},
        reads=dictionary_reads(hooks.source, hooks.target),
    )
    rows = np.concatenate([data.train_idx, data.heldout_idx])
    every = {name: np.concatenate(x) for name, x in inputs.items()}
    scored = score_dictionaries(
        run,
        saes,
        every,
        store,
        rows,
        fold_ids,
        max_features=max_features,
    )
    removals = removals_stage(run, data, R, removal, study)
    return Dictionaries(saes, removal, inputs, scored, removals)
