"""Stage 10: the depth sweep, the decomposition's out-of-fold ``linear`` EV of every layer.

Every point is the cross-fitted figure of :mod:`.decomposition` (folds by document, alpha
chosen inside the training folds, never on the tokens it scores); the target's point is the
headline itself (main store), the others come from the sweep store. The old fit, whose alpha
was chosen on the held-out tokens it then scores, is kept under ``holdout_chosen`` only for
the seed study's train global-mean R² that the depth plot draws beside ours.
"""

from __future__ import annotations

from typing import Any

from crosslayer.experiments.depth import depth_sweep
from crosslayer.experiments.study_a.hooks import sweep_hooks
from crosslayer.experiments.study_a.inputs import Hooks
from crosslayer.experiments.study_a.run import JsonFile, Run
from crosslayer.store import ActivationStore

DEFINITIONS = {
    "explained_variance": "the layer's decomposition.<hook>.linear.ev: out-of-fold EV of a "
    "ridge from the source, folds by document (see decomposition.definitions)",
    "explained_variance_ci95": "its document-bootstrap 95% CI",
    "explained_variance_standardised": "decomposition.<hook>.linear.ev_standardised",
    "token_explained_variance": "decomposition.<hook>.token.ev (the ceiling of any function of "
    "the current token)",
    "holdout_chosen": "the former sweep: alpha chosen on the held-out tokens it scores, so NOT "
    "an out-of-sample figure; kept for the seed study's train_r2_global_mean",
}


def run_depth_sweep(
    run: Run, sweep_store: ActivationStore, hooks: Hooks, decomposition: dict[str, Any]
) -> dict[str, Any]:
    """The depth curve: every resid_post from the source up to the target."""
    targets = sweep_hooks(hooks.source, hooks.target)[1:]

    def compute() -> dict[str, Any]:
        old = depth_sweep(sweep_store, hooks.source, targets).to_dict()
        rows = [decomposition[h] for h in targets]
        return {
            "source_hook": hooks.source,
            "target_hooks": targets,
            "explained_variance": [r["linear"]["ev"] for r in rows],
            "explained_variance_ci95": [r["linear"]["ci95"] for r in rows],
            "explained_variance_standardised": [r["linear"]["ev_standardised"] for r in rows],
            "token_explained_variance": [r["token"]["ev"] for r in rows],
            "store": [r["store"] for r in rows],
            "n_tokens": [r["n_tokens"] for r in rows],
            "holdout_chosen": old,
            "definitions": DEFINITIONS,
        }

    return run.cached(
        JsonFile(run.dirs.depth), compute, ("depth_sweep", "depth sweep: source → every resid_post")
    )
