"""Interpretability without a language-model judge: how concentrated a feature's tokens are.

For each feature, its ``top_n`` largest activations (fewer if it is active on fewer tokens)
and the tokens they sit on:

* ``token_entropy``: entropy in bits of that token distribution (0: always the same token;
  ``log2(top_n)``: every top activation on a different token);
* ``top_token_share``: the share of those activations on the most common token.

A feature whose top activations are one token is easy to name; one spread over many tokens
needs its contexts. Both are descriptive: they say nothing about predictability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike


@dataclass
class TopTokenStats:
    token_entropy: np.ndarray  # [m] bits; NaN for a feature never active
    top_token_share: np.ndarray  # [m]
    top_token: np.ndarray  # [m] the most common token id among the top activations (-1: none)
    n_top: np.ndarray  # [m] activations behind the two figures (min(top_n, active tokens))


def top_token_stats(F: ArrayLike, tokens: ArrayLike, top_n: int = 50) -> TopTokenStats:
    """Token entropy and top-token share over each column's ``top_n`` largest activations."""
    tok = np.asarray(tokens).reshape(-1)
    csc = sp.csc_matrix(F) if sp.issparse(F) else sp.csc_matrix(np.asarray(F))
    if csc.shape[0] != tok.size or top_n < 1:
        raise CrosslayerError(
            f"F has {csc.shape[0]} rows for {tok.size} tokens (top_n={top_n})",
            "pass one token id per row of F and top_n >= 1",
        )
    m = csc.shape[1]
    entropy, share = np.full(m, np.nan), np.full(m, np.nan)
    top_token, n_top = np.full(m, -1, dtype=np.int64), np.zeros(m, dtype=np.int64)
    for j in range(m):
        lo, hi = csc.indptr[j], csc.indptr[j + 1]
        vals, rows = csc.data[lo:hi], csc.indices[lo:hi]
        rows = rows[vals > 0]
        vals = vals[vals > 0]
        if vals.size == 0:
            continue
        # largest first; ties broken by row so that the result does not depend on storage
        order = np.lexsort((rows, -vals))[:top_n]
        ids, counts = np.unique(tok[rows[order]], return_counts=True)
        p = counts / counts.sum()
        entropy[j] = float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no -0.0
        share[j] = float(p.max())
        top_token[j] = int(ids[counts.argmax()])
        n_top[j] = int(counts.sum())
    return TopTokenStats(entropy, share, top_token, n_top)
