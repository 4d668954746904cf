"""Stages 6-7a: score every feature of an SAE from the source, out of fold, and describe it.

For every SAE: the minimum-positives rule (on training folds only), cross-fitted ridge R²
(alpha per feature by grouped inner CV), cross-fitted class-balanced logistic probes (C per
feature, each converged to its own tolerance), the cross-fitted token-lookup R² with its
permutation null, the study's protocol on a sample, and the contexts of the most and least
predictable features. Every score pools the folds of :func:`run_folds`: each token is scored
by a probe that never saw its document. One row per alive feature goes to
``features/<sae>.parquet`` (``docs/results_schema.md``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from crosslayer import fs
from crosslayer.crossfit import (
    CrossFitLogistic,
    CrossFitRidge,
    count_positives,
    grouped_folds,
    token_lookup_r2,
)
from crosslayer.crossfit.positives import OK
from crosslayer.crossfit.stats import SparseColumns
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.study_a.inputs import Data
from crosslayer.experiments.study_a.run import Run, nan_array
from crosslayer.experiments.study_a.saes import encode_sparse
from crosslayer.probes import study_protocol_probe
from crosslayer.runs import write_table
from crosslayer.store import ActivationStore, open_store

if TYPE_CHECKING:
    from sae_lens import SAE

DEFINITIONS = {
    "folds": "K folds by document over every token of the store (train and held-out); each "
    "token is scored by a probe fitted on the other K-1 folds",
    "n_pos": "tokens where the feature is active (> 0), all folds",
    "n_pos_train_min": "fewest active tokens in any training set (K-1 folds)",
    "scorable": "at least crossfit.min_pos_fit active and inactive tokens in every training set "
    "and at least crossfit.min_pos_score of each among the scored tokens",
    "r2": "out-of-fold ridge R² of the activation: 1 - Σ_k SSE_k / Σ (f - f̄)², alpha per "
    "feature and fold by grouped inner CV on the training folds",
    "balanced_accuracy": "out-of-fold balanced accuracy of the class-balanced logistic probe "
    "(active = > 0), threshold chosen on each training set",
    "auroc": "out-of-fold AUROC of the logistic probe's score, pooled over folds",
    "converged": "every outer logistic fit of the feature reached its gradient tolerance",
    "alpha": "median over folds of the chosen relative ridge strength (Ridge(alpha * n))",
    "C": "median over folds of the logistic probe's inverse L2 strength (scikit-learn units)",
    "token_r2": "out-of-fold token-lookup R²: E[f | token id] from the other folds, shrunk "
    "toward the feature mean (pseudo-count by inner CV); ~0 for a feature the token does not "
    "determine",
    "token_r2_null": "the largest token-lookup R² over permutations of the token ids: what the "
    "lookup scores on a feature it cannot predict",
    "var_linear": "share of the feature's out-of-fold variance linear in the current token's "
    "embedding: clip(r2, 0, 1)",
    "var_token_extra": "share the token's identity determines beyond linear: clip(max(token_r2, "
    "r2), 0, 1) - var_linear (the lookup is the ceiling of any function of the embedding)",
    "var_rest": "share neither explains: 1 - clip(max(token_r2, r2), 0, 1); the three sum to 1",
}
SUMMARY_METRICS = ("balanced_accuracy", "auroc", "r2", "token_r2")


VARIANCE_SPLIT = ("var_linear", "var_token_extra", "var_rest")


def variance_split(r2: np.ndarray, token_r2: np.ndarray) -> dict[str, np.ndarray]:
    """Each feature's out-of-fold variance split into linear-in-embedding, token-determined
    beyond linear, and the rest (:data:`DEFINITIONS`; NaN where either score is missing).

    ``token_r2`` (the cross-fitted lookup E[f | token]) bounds any function of the current
    embedding, so the token share is at least the linear one; where the lookup scores below
    the ridge (shrinkage, unseen tokens) the top is the ridge's and the extra is 0.
    """
    r2, token_r2 = np.asarray(r2, np.float64), np.asarray(token_r2, np.float64)
    linear = np.clip(r2, 0.0, 1.0)
    top = np.clip(np.fmax(token_r2, r2), 0.0, 1.0)
    missing = np.isnan(r2) | np.isnan(token_r2)
    out = {"var_linear": linear, "var_token_extra": top - linear, "var_rest": 1.0 - top}
    return {k: np.where(missing, np.nan, v) for k, v in out.items()}


def run_folds(store: ActivationStore, rows: np.ndarray, run: Run) -> np.ndarray:
    """The run's folds for store rows ``rows``: made once over all store rows, by document."""
    return store_folds(run, store)[rows]


def store_folds(run: Run, store: ActivationStore) -> np.ndarray:
    """Fold of every row of ``store`` (the main store or the sweep store) under the run's one
    fold rule: ``grouped_folds`` over the main store's documents, so a document is in the same
    fold in every stage. A store holding some of the documents (the sweep store) keeps their
    folds, renumbered ``0 … K'-1`` over the folds it has."""
    K = run.cfg.crossfit.n_folds
    same = store.path.resolve() == run.dirs.store.resolve()
    main = store if same else open_store(run.dirs.store)
    docs, first = np.unique(main.doc_ids, return_index=True)
    if len(docs) < K:
        raise CrosslayerError(
            f"the run's store holds {len(docs)} documents, too few for "
            f"crossfit.n_folds = {K} folds by document",
            "raise --tokens (more documents) or lower crossfit.n_folds",
        )
    row_folds = grouped_folds(main.doc_ids, K, run.cfg.seed)
    if same:
        return row_folds
    fold_of_doc = row_folds[first]
    at = np.searchsorted(docs, store.doc_ids)
    if (at >= len(docs)).any() or (docs[np.minimum(at, len(docs) - 1)] != store.doc_ids).any():
        raise CrosslayerError(
            f"{store.path} holds documents that are not in the run's store",
            "rerun the collection: both stores are filled from the same documents",
        )
    folds = fold_of_doc[at]
    used, folds = np.unique(folds, return_inverse=True)
    if len(used) < 2:
        raise CrosslayerError(
            f"{store.path} holds documents of only one of the run's folds",
            "raise sweep.tokens (more documents in the sweep) or lower crossfit.n_folds",
        )
    return folds.astype(np.int64)


def score_features(
    run: Run,
    name: str,
    X: np.ndarray,
    f: sp.csc_matrix,
    folds: np.ndarray,
    tokens: np.ndarray,
) -> dict[str, Any]:
    """Cross-fitted scores of every alive feature of ``f [n, d_sae]`` from ``X [n, d]``."""
    cfg, cf = run.cfg.probes, run.cfg.crossfit
    counts = count_positives(
        SparseColumns(f), folds, min_fit=cf.min_pos_fit, min_score=cf.min_pos_score
    )
    alive = np.flatnonzero(counts.alive)
    if alive.size == 0:
        raise CrosslayerError(
            f"the {name} SAE has no alive features (none fires in every training fold)",
            "check that the SAE matches the target, train it longer or raise --tokens",
        )
    scorable = alive[counts.scorable[alive]]
    probed = scorable
    if cfg.max_features is not None and scorable.size > cfg.max_features:
        rng = np.random.default_rng(run.cfg.seed)
        probed = np.sort(rng.choice(scorable, cfg.max_features, replace=False))
    n = f.shape[0]
    m = len(alive)
    col = {int(j): i for i, j in enumerate(alive)}
    table: dict[str, np.ndarray] = {
        "feature": alive,
        "density": counts.n_pos[alive] / n,
        "n_pos": counts.n_pos[alive],
        "n_pos_train_min": counts.n_pos_train[:, alive].min(0),
        "scorable": counts.scorable[alive],
        "excluded_reason": np.array(
            ["" if s == OK else s for s in counts.status[alive]], dtype=object
        ),
        "probed": np.isin(alive, probed),
    }
    for key in ("r2", "alpha", "balanced_accuracy", "auroc", "C", "token_r2", "token_r2_null"):
        table[key] = np.full(m, np.nan)
    table["converged"] = np.zeros(m, dtype=bool)
    n_not_converged = 0
    timings: dict[str, float] = {}
    if probed.size:
        at = np.array([col[int(j)] for j in probed])
        fp = f[:, probed]
        F = SparseColumns(fp)
        k = probed.size
        with _timed(run, timings, "ridge", f"{name}: ridge probes, {probed.size:,} features"):
            # One pass for the features and their 0/1 labels: the labels' alphas set the
            # logistic C (C_rule "ridge"), and both share each fold's eigendecomposition.
            if cfg.C_rule == "ridge":
                targets = SparseColumns(sp.hstack([fp, (fp > 0).astype(np.float32)]))
            else:
                targets = F
            # The inner-CV path by partial fractions, in float64: one product for the whole
            # alpha grid, exact to round-off (benchmarks/results/crossfit_real.md).
            ridge = CrossFitRidge(device=run.cfg.device)
            ridge.fit(X, targets, folds)
        table["r2"][at], table["alpha"][at] = ridge.r2_[:k], np.median(ridge.alpha_[:, :k], 0)
        label_alpha = ridge.alpha_[:, k:] if cfg.C_rule == "ridge" else None
        with _timed(run, timings, "logistic", f"{name}: logistic probes, {probed.size:,} features"):
            logit = CrossFitLogistic(
                Cs=tuple(cfg.Cs),
                C_rule=cfg.C_rule,
                tol=cfg.tol,
                max_iter=cfg.max_iter,
                device=run.cfg.device,
            ).fit(X, F, folds, label_alpha=label_alpha)
        table["balanced_accuracy"][at] = logit.balanced_accuracy_
        table["auroc"][at] = logit.auroc_
        table["C"][at] = np.median(logit.C_, 0)
        table["converged"][at] = logit.converged_.all(0)
        n_not_converged = int(logit.n_not_converged_)
        with _timed(
            run, timings, "token_lookup", f"{name}: token lookup, {probed.size:,} features"
        ):
            tl = token_lookup_r2(
                tokens, F, folds, n_permutations=cfg.token_permutations, seed=run.cfg.seed
            )
        table["token_r2"][at], table["token_r2_null"][at] = tl.r2, tl.null_level
    table |= variance_split(table["r2"], table["token_r2"])
    summary = {key: _summary(table[key][table["probed"]]) for key in SUMMARY_METRICS}
    return {
        "n_features": int(f.shape[1]),
        "n_tokens": int(n),
        "n_folds": int(cf.n_folds),
        "n_alive": int(alive.size),
        "n_scorable": int(scorable.size),
        "n_probed": int(probed.size),
        "n_not_converged": n_not_converged,
        "n_probed_not_converged": int((table["probed"] & ~table["converged"]).sum()),
        "excluded": {"dead in training": int(f.shape[1] - alive.size)}
        | {r: v for r, v in counts.excluded.items() if v and not r.startswith("dead")},
        "rule": {"min_pos_fit": cf.min_pos_fit, "min_pos_score": cf.min_pos_score},
        "C_rule": cfg.C_rule,
        "summary": summary,
        "timings": timings,
        "table": table,
        "definitions": DEFINITIONS,
    }


@contextmanager
def _timed(run: Run, timings: dict[str, float], key: str, message: str) -> Iterator[None]:
    """Announce one part of a stage and record its wall time under ``timings[key]``."""
    run.say(message)
    start = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - start, 2)


def _summary(values: np.ndarray) -> dict[str, Any]:
    """Mean, median and quartiles over the probed (scorable) features, with their count."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None, "q25": None, "q75": None}
    q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "median": float(med),
        "q25": float(q25),
        "q75": float(q75),
    }


def study_protocol(
    run: Run, X: np.ndarray, f: sp.csc_matrix, probed: np.ndarray
) -> dict[str, Any] | None:
    """The study's protocol on its own terms: a sample of features, the first
    ``study_tokens`` tokens (train rows first) with no regard to documents, its 80/20 split."""
    cfg = run.cfg.probes
    if not cfg.study_protocol or cfg.study_features <= 0 or probed.size == 0:
        return None
    rng = np.random.default_rng(run.cfg.seed)
    sample = np.sort(rng.choice(probed, min(cfg.study_features, probed.size), replace=False))
    n = min(cfg.study_tokens, len(X))
    acc = [
        study_protocol_probe(X[:n], f[:n, j].toarray().ravel(), seed=run.cfg.seed) for j in sample
    ]
    return {
        "index": sample,
        "accuracy": [a["accuracy"] for a in acc],
        "n_per_class": [a["n_per_class"] for a in acc],
        "n_tokens": n,
    }


def top_contexts(
    f: sp.csc_matrix,
    feature: int,
    rows: np.ndarray,
    store: ActivationStore,
    tokenizer: Any,
    *,
    top_k: int,
    window: int,
) -> list[dict[str, Any]]:
    """The ``top_k`` tokens where ``feature`` fires most, each with the text before it.

    The marked token is wrapped in ``«»``. ``rows[i]`` is the store row of row ``i`` of ``f``;
    store rows are in context order, so the preceding tokens of a context are the rows just
    before it with the same ``context_id``.
    """
    col = f[:, feature]
    col = col.tocoo() if hasattr(col, "tocoo") else sp.coo_matrix(col)
    order = np.argsort(-col.data, kind="stable")[:top_k]
    out = []
    for i in order:
        row = int(rows[col.row[i]])
        start = row
        while (
            start > 0
            and row - start < window
            and store.context_ids[start - 1] == store.context_ids[row]
        ):
            start -= 1
        before = tokenizer.decode(store.tokens[start:row].tolist())
        token = tokenizer.decode([int(store.tokens[row])])
        out.append(
            {
                "activation": float(col.data[i]),
                "token": token,
                "text": f"{before}«{token}»",
                "doc_id": int(store.doc_ids[row]),
                "split": "heldout" if store.split[row] else "train",
            }
        )
    return out


def extremes(
    result: dict[str, Any],
    f_all: sp.csc_matrix,
    rows: np.ndarray,
    store: ActivationStore,
    tokenizer: Any,
    run: Run,
) -> dict[str, list[dict[str, Any]]]:
    """The ``n_extreme`` most and least predictable features with their top contexts."""
    cfg = run.cfg.analysis
    feats = result["features"]
    value = nan_array(feats[cfg.metric])
    ok = np.flatnonzero(np.isfinite(value))
    ranked = ok[np.argsort(-value[ok], kind="stable")]
    picks = {"most": ranked[: cfg.n_extreme], "least": ranked[::-1][: cfg.n_extreme]}
    return {
        side: [
            {
                "feature": int(feats["index"][i]),
                cfg.metric: float(value[i]),
                "density": feats["density"][i],
                "token_r2": feats["token_r2"][i],
                "contexts": top_contexts(
                    f_all,
                    int(feats["index"][i]),
                    rows,
                    store,
                    tokenizer,
                    top_k=cfg.top_k,
                    window=cfg.window,
                ),
            }
            for i in idx
        ]
        for side, idx in picks.items()
    }


def analyse_sae(
    run: Run,
    name: str,
    sae: SAE[Any],
    data: Data,
    x_train: np.ndarray,
    x_heldout: np.ndarray,
    rows: np.ndarray,
    store: ActivationStore,
    tokenizer: Any,
) -> dict[str, Any]:
    """Cross-fitted scores, the study's protocol and top contexts for one SAE's features.

    ``x_train``/``x_heldout`` are what the SAE reads (target activations or residuals); its
    features are always predicted from the source activations in ``data``, over all tokens
    (``rows``: store row of each train + held-out row). Writes ``features/<name>.parquet``
    (and a CSV copy) and returns the JSON part (the table as lists, for plots and report).
    """
    f_all = sp.vstack([encode_sparse(sae, x_train), encode_sparse(sae, x_heldout)]).tocsc()
    X = np.concatenate([data.X_train, data.X_heldout])
    folds = run_folds(store, rows, run)
    res = score_features(run, name, X, f_all, folds, store.tokens[rows])
    table = res.pop("table")
    # Seconds per part go to the progress line, not to the stage file: a rerun's files must
    # be identical (the stage's total is in results.json's timings).
    parts = res.pop("timings")
    run.say(f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in parts.items()))
    write_table(pd.DataFrame(table), run.dirs.feature_table(name))
    res["study_protocol"] = study_protocol(run, X, f_all, table["feature"][table["probed"]])
    res["features"] = {
        k: (v.tolist() if k != "excluded_reason" else [str(x) for x in v]) for k, v in table.items()
    }
    res["features"]["index"] = res["features"]["feature"]  # the name plots and report read
    res["table"] = run.dirs.feature_table(name).relative_to(run.out).as_posix()
    res = fs.jsonable(res)
    res["extremes"] = extremes(res, f_all, rows, store, tokenizer, run)
    return dict(res)


EMERGENCE_COLUMNS = ("emergence_layer", "class")


def add_columns(path: Path, columns: dict[str, Any] | None) -> None:
    """Join a later stage's per-feature columns (``feature`` + :data:`EMERGENCE_COLUMNS`)
    onto the table at ``path``; rewriting with the same columns gives the same file."""
    if not columns or not path.is_file():
        return
    table = pd.read_parquet(path).drop(columns=list(EMERGENCE_COLUMNS), errors="ignore")
    extra = pd.DataFrame({k: columns[k] for k in ("feature", *EMERGENCE_COLUMNS)})
    write_table(table.merge(extra, on="feature", how="left"), path)
