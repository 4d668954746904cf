"""Stage 9: the layer decomposition of the target and of every layer of the depth sweep.

How much of each layer is its mean, linear in the source, token identity, short context, or
the rest (:func:`crosslayer.decomposition.decompose`), out of fold by the run's document
folds (``grouped_folds(store.doc_ids, crossfit.n_folds, seed)`` over all store rows, the
folds of every cross-fitted stage), each figure with a document-bootstrap CI. The target's
predictions are then spliced into the model in place of the layer on a sample of the
store's contexts (:func:`crosslayer.decomposition.splice_scores`).

The target comes from the main store; the sweep's other layers from the sweep store (its
own folds by the same rule), so each entry names the store and the tokens it rests on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crosslayer.decomposition import (
    DEFINITIONS,
    decompose,
    predictor_names,
    splice_contexts,
    splice_scores,
)
from crosslayer.experiments.study_a.features import store_folds
from crosslayer.experiments.study_a.hooks import sweep_hooks
from crosslayer.experiments.study_a.inputs import Hooks
from crosslayer.experiments.study_a.run import JsonFile, Run
from crosslayer.model import LoadedModel
from crosslayer.rundir import STORE, SWEEP_STORE
from crosslayer.store import ActivationStore

MAX_LAG = 4  # context_1 … context_4
# The sweep's layers get the same predictors; its cost is mostly the context designs (their
# eigendecompositions and predictions): 0 here keeps mean/linear/token only, ~5x cheaper.
SWEEP_MAX_LAG = 1  # the sweep's other layers: context_1 only (budget: issue 14, item 6)
LAG_RANK = 128  # previous tokens enter through their top-128 principal components (d > 128)
SPLICE_CONTEXTS = 8  # contexts spliced per predictor (a full forward pass each)
SPLICE_BATCH = 2  # contexts per forward pass (logits are [batch, seq, vocab])


def _decompose(
    run: Run,
    store: ActivationStore,
    source: str,
    layers: list[str],
    keep_rows: np.ndarray | None = None,
    max_lag: int = MAX_LAG,
) -> Any:
    cfg = run.cfg
    folds = store_folds(run, store)  # the run's fold of each document, in either store
    d = store.d(source)
    return decompose(
        store.activations(source),
        {h: store.activations(h) for h in layers},
        store.tokens,
        store.context_ids,
        store.doc_ids,
        folds,
        max_lag=max_lag,
        lag_rank=None if d <= LAG_RANK else LAG_RANK,
        n_bootstrap=cfg.crossfit.n_bootstrap,
        seed=cfg.seed,
        keep_rows=keep_rows,
        keep_layers=layers if keep_rows is not None else (),
    )


def _mean(store: ActivationStore, hook: str) -> np.ndarray:
    total = np.zeros(store.d(hook))
    for batch in store.iter_batches(hook, split=None, dtype=np.float64):
        total += batch[hook].sum(0)
    return (total / store.n_tokens).astype(np.float32)


def run_decomposition(
    run: Run,
    store: ActivationStore,
    sweep_store: ActivationStore | None,
    hooks: Hooks,
    lm: LoadedModel,
) -> dict[str, Any]:
    """``{<hook>: {<predictor>: {...}, top_dim_share, ...}, definitions: {...}}``."""

    def compute() -> dict[str, Any]:
        cfg, target = run.cfg, hooks.target
        tok = lm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        contexts = splice_contexts(
            store.tokens,
            store.positions,
            store.context_ids,
            bos_id=int(tok.bos_token_id),
            pad_id=int(pad),
            n_contexts=SPLICE_CONTEXTS,
            seed=cfg.seed,
        )
        main = _decompose(run, store, hooks.source, [target], contexts.rows)
        names = predictor_names(MAX_LAG)
        spliced = splice_scores(
            lm,
            contexts,
            target,
            {p: main.kept[target][p] for p in names},
            _mean(store, target),
            batch_size=SPLICE_BATCH,
        )
        out: dict[str, Any] = {target: main.layers[target] | {"store": STORE}}
        for p in names:
            out[target][p] |= {k: spliced[p][k] for k in ("ce_loss_recovered", "kl", "ce")}
        out[target]["splice"] = {k: v for k, v in spliced.items() if k not in names}
        if sweep_store is not None:
            others = [h for h in sweep_hooks(hooks.source, target)[1:] if h != target]
            if others:
                sweep = _decompose(run, sweep_store, hooks.source, others, None, SWEEP_MAX_LAG)
                for h in others:
                    out[h] = sweep.layers[h] | {"store": SWEEP_STORE}
        out["definitions"] = DEFINITIONS
        out["settings"] = {
            "n_folds": cfg.crossfit.n_folds,
            "n_bootstrap": cfg.crossfit.n_bootstrap,
            "max_lag": MAX_LAG,
            "sweep_max_lag": SWEEP_MAX_LAG,
            "lag_rank": None if store.d(hooks.source) <= LAG_RANK else LAG_RANK,
            "splice_contexts": SPLICE_CONTEXTS,
        }
        return out

    return run.cached(
        JsonFile(run.dirs.decomposition),
        compute,
        ("decomposition", "layer decomposition: mean, linear, token, context, rest"),
    )
