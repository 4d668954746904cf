"""Stages 6-7a: probe every alive feature of an SAE from the source, and describe each one.

For every SAE: which features are alive, ridge and logistic probes for all of them (and the
study's protocol on a sample), how much of each feature the current token alone determines,
and the contexts of the most and least predictable features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from crosslayer import fs
from crosslayer.compare import token_determinedness
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.study_a.inputs import Data
from crosslayer.experiments.study_a.run import Run, nan_array, sample_rows
from crosslayer.experiments.study_a.saes import encode_sparse
from crosslayer.probes import FeatureProbes, study_protocol_probe
from crosslayer.store import ActivationStore

if TYPE_CHECKING:
    from sae_lens import SAE


def alive_features(f_train: sp.csc_matrix, f_heldout: sp.csc_matrix, min_active: int) -> np.ndarray:
    """Features active on >= ``min_active`` train tokens and on some but not all held-out ones."""
    n_train = np.diff((f_train > 0).astype(np.int8).tocsc().indptr)
    n_held = np.diff((f_heldout > 0).astype(np.int8).tocsc().indptr)
    ok = (n_train >= min_active) & (n_train < f_train.shape[0])
    ok &= (n_held >= 1) & (n_held < f_heldout.shape[0])
    return np.flatnonzero(ok)


def _columns(f: sp.csc_matrix, features: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """``fn(start, stop)`` giving dense columns ``features[start:stop]`` (what probes stream)."""
    return lambda j0, j1: f[:, features[j0:j1]].toarray()


def probe_features(
    run: Run,
    name: str,
    data: Data,
    f_train: sp.csc_matrix,
    f_heldout: sp.csc_matrix,
) -> dict[str, Any]:
    """Fit ridge + logistic probes for every alive feature on train, score them on held-out."""
    cfg = run.cfg.probes
    alive = alive_features(f_train, f_heldout, cfg.min_active)
    if alive.size == 0:
        raise CrosslayerError(
            f"the {name} SAE has no alive features (none fires on >= {cfg.min_active} train "
            "tokens and on some held-out tokens)",
            "check that the SAE matches the target, train it longer, raise --tokens, or lower "
            "probes.min_active",
        )
    rng = np.random.default_rng(run.cfg.seed)
    probed = alive
    if cfg.max_features is not None and alive.size > cfg.max_features:
        probed = np.sort(rng.choice(alive, cfg.max_features, replace=False))
    probes = FeatureProbes(alpha=cfg.alpha, C=cfg.C, max_iter=cfg.max_iter, device=run.cfg.device)
    m = len(probed)
    fit_rows = sample_rows(len(data.X_train), cfg.train_tokens, run.cfg.seed)
    probes.fit(data.X_train[fit_rows], _columns(f_train[fit_rows], probed), n_features=m)
    res = probes.evaluate(data.X_heldout, _columns(f_heldout, probed), n_features=m)
    n_active = np.diff((f_train[:, probed] > 0).astype(np.int8).tocsc().indptr)
    out: dict[str, Any] = {
        "n_features": int(f_train.shape[1]),
        "n_alive": int(alive.size),
        "n_probed": m,
        "n_probe_fit_tokens": len(fit_rows),
        "features": {
            "index": probed,
            "r2": res.r2,
            "balanced_accuracy": res.balanced_accuracy,
            "auroc": res.auroc,
            "density": n_active / f_train.shape[0],  # on the whole train split
            "n_active_train": n_active,
            "n_active_heldout": res.n_active_heldout,
        },
        "definitions": res.definitions,
        "study_protocol": None,
    }
    if cfg.study_protocol and cfg.study_features > 0:
        # The study's protocol on its own terms: a sample of features, the first
        # `study_tokens` tokens (train rows first) with no regard to our split, its 80/20 split.
        k = min(cfg.study_features, m)
        sample = np.sort(rng.choice(probed, k, replace=False))
        n = min(cfg.study_tokens, len(data.X_train) + len(data.X_heldout))
        X_all = np.concatenate([data.X_train, data.X_heldout])[:n]
        f_all = sp.vstack([f_train, f_heldout]).tocsc()[:n]
        acc = [
            study_protocol_probe(X_all, f_all[:, j].toarray().ravel(), seed=run.cfg.seed)
            for j in sample
        ]
        out["study_protocol"] = {
            "index": sample,
            "accuracy": [a["accuracy"] for a in acc],
            "n_per_class": [a["n_per_class"] for a in acc],
            "n_tokens": n,
        }
    return out


def token_determinedness_of(
    f: sp.csc_matrix, tokens: np.ndarray, features: np.ndarray, min_count: int, block: int = 256
) -> np.ndarray:
    """Share of each feature's variance explained by the current token's identity alone.

    Eta² of the feature grouped by token id (:func:`crosslayer.compare.token_determinedness`),
    over tokens seen at least ``min_count`` times; computed ``block`` features at a time.
    """
    get = _columns(f, features)
    parts = [
        token_determinedness(tokens, get(j0, min(j0 + block, len(features))), min_count=min_count)
        for j0 in range(0, len(features), block)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


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
                "token_determinedness": feats["token_determinedness"][i],
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
    """Probes, token-determinedness and top contexts for one SAE's features.

    ``x_train``/``x_heldout`` are what the SAE reads (target activations or residuals);
    its features are always predicted from the source activations in ``data``.
    """
    f_train, f_heldout = encode_sparse(sae, x_train), encode_sparse(sae, x_heldout)
    f_all = sp.vstack([f_train, f_heldout]).tocsc()
    res = probe_features(run, name, data, f_train, f_heldout)
    res["features"]["token_determinedness"] = token_determinedness_of(
        f_all,
        store.tokens[rows],
        np.asarray(res["features"]["index"]),
        run.cfg.analysis.token_min_count,
    )
    res = fs.jsonable(res)
    res["extremes"] = extremes(res, f_all, rows, store, tokenizer, run)
    return dict(res)
