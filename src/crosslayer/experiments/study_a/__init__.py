"""Study A: how much of a late layer — and of its SAE features — is predictable from an early one.

The question of seed study 000: fit an affine "transcoder" from the token embeddings to a late
residual stream, call what it cannot explain the part *computed on the way*
(``residual = late - transcoder(early)``), train one SAE on the late activations (baseline)
and one on the residuals, and ask whether the residual SAE's features are less predictable
from the embeddings than the baseline's.

What we do differently from the study (``shared/design/SEED_NOTES.md``, "Study A"):

* hooks are named (``hook_embed`` → ``blocks.12.hook_resid_post``), so the SAE and the target
  are the same tensor, not one layer apart;
* BOS/pad positions are excluded, contexts de-duplicated, and train / held-out splits disjoint
  by document; the transcoder is fitted on the train split only (ridge, strength by GCV on
  the train split) and scored on held-out tokens with per-dimension explained variance. The
  study's R² (one global mean, on the training data) and its Adam recipe are reported beside;
* both SAEs have the same architecture, width, sparsity target, training tokens and seed;
  *every* alive feature of both is probed, with class-balanced held-out metrics (balanced
  accuracy, AUROC, R²), and the two distributions are compared with a bootstrap CI and a
  Mann-Whitney test. The study's probe protocol runs beside ours on a sample of features.

Stages, one module each, run in this order by :func:`~.pipeline.run_study_a` (each one's
output is a checkpoint in the run directory, :mod:`crosslayer.rundir`; :meth:`.run.Run.cached`
is the one rule by which a rerun reuses them):

1. ``inputs``: load the model and, if given, the pretrained SAE; resolve and check the hooks
   (``hooks``); plan and check both splits of the corpus
2. ``inputs``: collect one store (source + target) and one smaller depth-sweep store
3. ``transcoders``: ridge (ours), Adam (the study's), MLP (one more predictor, not a
   ceiling: a function of the current embedding, it stays below E[late | token])
4. ``transcoders``: residuals = target - ridge transcoder(source), for every token
5. ``saes``: train the baseline SAE (target) and the residual SAE (residuals), identically
6. ``features``: probe every alive feature of each SAE from the source; the study's protocol
   beside; density, token-lookup R² and contexts per feature
7. ``comparison``: baseline vs residual, every metric's distribution
8. ``sweep``: the depth sweep
9. ``results``, ``plots``: ``results.json`` (docs/results_schema.md), plots, the summary table

Entry point: :func:`run_study_a` (the CLI ``crosslayer run`` builds a :class:`RunConfig`).
The names below are imported on first use: ``crosslayer run --dry-run`` needs only
``hooks`` and the plan, and importing every stage (store, probes, sae-lens, the report)
costs about 10 s of start-up on 2 cores.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crosslayer.rundir import TRAINED_SAES as SAE_NAMES

if TYPE_CHECKING:
    from crosslayer.experiments.study_a.comparison import compare_saes
    from crosslayer.experiments.study_a.features import (
        analyse_sae,
        extremes,
        run_folds,
        score_features,
        study_protocol,
        top_contexts,
    )
    from crosslayer.experiments.study_a.hooks import default_target, sweep_hooks, sweep_tokens
    from crosslayer.experiments.study_a.inputs import (
        Data,
        Hooks,
        SplitCounts,
        SweepDocs,
        check_split,
        collect_stores,
        load_data,
        plan_split,
        resolve_hooks,
        sweep_documents,
    )
    from crosslayer.experiments.study_a.pipeline import run_study_a
    from crosslayer.experiments.study_a.plots import write_plots
    from crosslayer.experiments.study_a.results import (
        SCHEMA,
        SCHEMA_VERSION,
        STUDY_REFERENCE,
        summary_table,
    )
    from crosslayer.experiments.study_a.run import Run, default_out, open_run
    from crosslayer.experiments.study_a.saes import encode_sparse, sae_train_config, train_saes
    from crosslayer.experiments.study_a.sweep import run_depth_sweep
    from crosslayer.experiments.study_a.transcoders import Transcoders, fit_transcoders, residuals

# public name -> the stage module that defines it
_API = {
    "run_study_a": "pipeline",
    "SCHEMA": "results",
    "SCHEMA_VERSION": "results",
    "STUDY_REFERENCE": "results",
    "summary_table": "results",
    "Run": "run",
    "default_out": "run",
    "open_run": "run",
    "default_target": "hooks",
    "sweep_hooks": "hooks",
    "sweep_tokens": "hooks",
    "Data": "inputs",
    "Hooks": "inputs",
    "SplitCounts": "inputs",
    "check_split": "inputs",
    "collect_stores": "inputs",
    "load_data": "inputs",
    "plan_split": "inputs",
    "resolve_hooks": "inputs",
    "SweepDocs": "inputs",
    "sweep_documents": "inputs",
    "Transcoders": "transcoders",
    "fit_transcoders": "transcoders",
    "residuals": "transcoders",
    "encode_sparse": "saes",
    "sae_train_config": "saes",
    "train_saes": "saes",
    "analyse_sae": "features",
    "extremes": "features",
    "run_folds": "features",
    "score_features": "features",
    "study_protocol": "features",
    "top_contexts": "features",
    "compare_saes": "comparison",
    "run_depth_sweep": "sweep",
    "write_plots": "plots",
}

__all__ = [
    "SAE_NAMES",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STUDY_REFERENCE",
    "Data",
    "Hooks",
    "Run",
    "SplitCounts",
    "SweepDocs",
    "Transcoders",
    "analyse_sae",
    "check_split",
    "collect_stores",
    "compare_saes",
    "default_out",
    "default_target",
    "encode_sparse",
    "extremes",
    "fit_transcoders",
    "load_data",
    "open_run",
    "plan_split",
    "residuals",
    "resolve_hooks",
    "run_depth_sweep",
    "run_folds",
    "run_study_a",
    "sae_train_config",
    "score_features",
    "study_protocol",
    "summary_table",
    "sweep_documents",
    "sweep_hooks",
    "sweep_tokens",
    "top_contexts",
    "train_saes",
    "write_plots",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
