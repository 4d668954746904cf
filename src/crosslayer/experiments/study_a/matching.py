"""Matching features of two SAEs by decoder direction, and what changes over matched pairs.

Two dictionaries trained on related inputs (baseline vs residual, baseline vs placebo, or one
dictionary under two seeds) have no shared feature index. We pair them one-to-one by the
cosine of their decoder rows (``W_dec [d_sae, d]``, the direction a feature writes):
**Hungarian assignment** (``scipy.optimize.linear_sum_assignment`` on ``-cos``), which
maximises the summed cosine over a one-to-one pairing. Unlike mutual nearest neighbours it
pairs every feature of the smaller dictionary, so a pair's cosine says how good the match is
and thresholds are applied afterwards (:data:`MATCH_THRESHOLDS`). The cosine is signed: a
feature and its negation write opposite directions and are not the same feature.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from crosslayer.errors import CrosslayerError

MATCH_THRESHOLDS: tuple[float, ...] = (0.5, 0.7, 0.9)
"""Cosines above which a pair counts as "the same feature" in the summaries."""


def decoder_cosines(W_dec_a: np.ndarray, W_dec_b: np.ndarray) -> np.ndarray:
    """``[n_a, n_b]`` cosine of every decoder row of ``a`` with every row of ``b`` (float64)."""
    a = np.asarray(W_dec_a, dtype=np.float64)
    b = np.asarray(W_dec_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise CrosslayerError(
            f"decoders of shapes {a.shape} and {b.shape} cannot be matched",
            "pass two W_dec matrices [d_sae, d] with the same d (SAEs on the same hook)",
        )
    na = np.linalg.norm(a, axis=1, keepdims=True)
    nb = np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a / np.maximum(na, 1e-30)) @ (b / np.maximum(nb, 1e-30)).T)


def match_features(W_dec_a: np.ndarray, W_dec_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs maximising the summed decoder cosine (Hungarian; module docstring).

    Returns ``pairs [min(n_a, n_b), 2]`` (feature of ``a``, feature of ``b``), sorted by the
    feature of ``a``, and their cosines.
    """
    cos = decoder_cosines(W_dec_a, W_dec_b)
    rows, cols = linear_sum_assignment(-cos)
    return np.stack([rows, cols], axis=1), cos[rows, cols]


def match_summary(cosines: np.ndarray) -> dict[str, Any]:
    """Quartiles of the matched cosines and the share of pairs above each threshold."""
    c = np.asarray(cosines, dtype=np.float64)
    q = np.percentile(c, [25, 50, 75]) if c.size else [np.nan] * 3
    return {
        "n_pairs": int(c.size),
        "cosine_q25": float(q[0]),
        "cosine_median": float(q[1]),
        "cosine_q75": float(q[2]),
        "share_above": {
            str(t): float((c > t).mean()) if c.size else np.nan for t in MATCH_THRESHOLDS
        },
    }


def matched_change(
    pairs: np.ndarray,
    cosines: np.ndarray,
    score_a: np.ndarray,
    score_b: np.ndarray,
    *,
    threshold: float = 0.7,
) -> dict[str, Any]:
    """Mean change ``score_b - score_a`` over matched pairs with cosine above ``threshold``
    whose features both have a finite score (``score_x[i]``: the score of feature ``i``, NaN
    where it was not scored).

    This is the within-feature view: the same direction, read from two inputs. Its spread
    across pairs is descriptive only (pairs are not independent draws; the seed and the
    document are the units of :mod:`~.uncertainty`).
    """
    sa = np.asarray(score_a, dtype=np.float64)[pairs[:, 0]]
    sb = np.asarray(score_b, dtype=np.float64)[pairs[:, 1]]
    keep = (np.asarray(cosines) > threshold) & np.isfinite(sa) & np.isfinite(sb)
    d = sb[keep] - sa[keep]
    q = np.percentile(d, [25, 50, 75]) if d.size else [np.nan] * 3
    return {
        "threshold": threshold,
        "n_pairs": int(keep.sum()),
        "mean_change": float(d.mean()) if d.size else np.nan,
        "median_change": float(q[1]),
        "change_q25": float(q[0]),
        "change_q75": float(q[2]),
        "definition": "score(b) - score(a) over one-to-one decoder-cosine matches (Hungarian) "
        f"with cosine > {threshold} and both features scored",
    }
