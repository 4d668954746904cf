"""Grouped K folds by document: every token is scored by a probe that never saw its document.

Tokens of one document are correlated (repeated names, topic words), so folds that split a
document would let a probe memorise it and score it in-sample. Documents are assigned whole,
largest first, each to the fold with the fewest tokens so far (ties broken by a seeded random
order), so the folds hold about the same number of tokens even when documents differ in length.
"""

from __future__ import annotations

import numpy as np

from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike


def grouped_folds(groups: ArrayLike, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id ``0 … n_splits-1`` of each token, from its document id ``groups [n]``.

    Deterministic in ``(groups, n_splits, seed)``: no document is in two folds, and the
    folds' token counts differ by at most the length of one document.
    """
    g = np.asarray(groups).reshape(-1)
    if g.size == 0:
        raise CrosslayerError("groups is empty", "pass one document id per token")
    docs, inverse, sizes = np.unique(g, return_inverse=True, return_counts=True)
    if n_splits < 2 or len(docs) < n_splits:
        raise CrosslayerError(
            f"cannot make {n_splits} folds by document from {len(docs)} documents",
            "use n_splits >= 2 and at most the number of documents",
        )
    rng = np.random.default_rng(seed)
    # A random order first, then a stable sort by size: equal-size documents land in
    # seeded-random folds instead of in the order of their ids.
    order = rng.permutation(len(docs))
    order = order[np.argsort(-sizes[order], kind="stable")]
    load = np.zeros(n_splits, dtype=np.int64)
    doc_fold = np.empty(len(docs), dtype=np.int64)
    for doc in order:
        k = int(np.argmin(load))  # the first lightest fold: deterministic
        doc_fold[doc] = k
        load[k] += sizes[doc]
    return doc_fold[inverse]


def check_folds(fold_ids: ArrayLike, n: int) -> tuple[np.ndarray, int]:
    """Validate fold ids for ``n`` tokens (``0 … K-1``, every fold used); returns them and K."""
    f = np.asarray(fold_ids).reshape(-1)
    if f.size != n or not np.issubdtype(f.dtype, np.integer):
        raise CrosslayerError(
            f"fold_ids must be {n} integers (one per token), got {f.size} of {f.dtype}",
            "build them with crosslayer.crossfit.grouped_folds(document_ids)",
        )
    k = int(f.max()) + 1 if f.size else 0
    if f.min() < 0 or k < 2 or len(np.unique(f)) != k:
        raise CrosslayerError(
            f"fold_ids must use every value 0 … K-1 with K >= 2, got {np.unique(f)[:10]}",
            "build them with crosslayer.crossfit.grouped_folds(document_ids)",
        )
    return f.astype(np.int64), k
