"""Compare two distributions of per-feature scores, and how token-determined features are.

:func:`compare_distributions` answers "do features of SAE A score higher than those of SAE B?"
with summary statistics, a bootstrap confidence interval of the difference in means and a
Mann-Whitney U test. :func:`token_determinedness` measures, per feature, the share of its
variance explained by the current token's identity alone (eta squared of a one-way ANOVA with
the token id as the group).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse
from scipy import stats

from crosslayer.errors import CrosslayerError
from crosslayer.metrics import row_chunks
from crosslayer.validation import ArrayLike, check_array, check_length


def _finite_1d(name: str, x: ArrayLike) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size < 2:
        raise CrosslayerError(
            f"{name} has fewer than two finite values",
            "pass at least two scored features per group",
        )
    return v


def _describe(v: np.ndarray, threshold: float) -> dict[str, float]:
    q25, median, q75 = np.percentile(v, [25, 50, 75])
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "median": float(median),
        "q25": float(q25),
        "q75": float(q75),
        "frac_above": float((v > threshold).mean()),
    }


def compare_distributions(
    a: ArrayLike, b: ArrayLike, *, threshold: float = 0.8, n_boot: int = 10_000, seed: int = 0
) -> dict[str, Any]:
    """Summaries of ``a`` and ``b`` (NaNs dropped), and tests of their difference.

    Returns ``{"a": {...}, "b": {...}, "diff_mean": mean(a) - mean(b), "diff_mean_ci95":
    [lo, hi] (percentile bootstrap, ``n_boot`` resamples of each group independently, seeded),
    "mannwhitney_u": U of a, "mannwhitney_p": two-sided p, "threshold": threshold}``.
    """
    va, vb = _finite_1d("a", a), _finite_1d("b", b)
    if n_boot < 100:
        raise CrosslayerError(
            f"n_boot={n_boot} is too few for a 95% interval", "use n_boot >= 1000"
        )
    boot = stats.bootstrap(
        (va, vb),
        lambda x, y, axis: x.mean(axis) - y.mean(axis),
        n_resamples=n_boot,
        confidence_level=0.95,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    mw = stats.mannwhitneyu(va, vb, alternative="two-sided")
    return {
        "a": _describe(va, threshold),
        "b": _describe(vb, threshold),
        "threshold": threshold,
        "diff_mean": float(va.mean() - vb.mean()),
        "diff_mean_ci95": [
            float(boot.confidence_interval.low),
            float(boot.confidence_interval.high),
        ],
        "mannwhitney_u": float(mw.statistic),
        "mannwhitney_p": float(mw.pvalue),
    }


def token_determinedness(
    token_ids: ArrayLike, F: ArrayLike, *, min_count: int = 1, chunk_size: int = 65_536
) -> np.ndarray:
    """Eta squared of each feature grouped by token id: between-token SS / total SS.

    ``1`` means the feature is a function of the current token; ``0`` means its token means are
    all equal. Tokens seen fewer than ``min_count`` times are left out first (a token seen
    once fits its own value exactly, which inflates eta squared on small samples). Features
    that are constant over the kept tokens get NaN. Computed in float64 with one sparse
    one-hot product per chunk of rows; ``F`` may be a memmap.
    """
    n, m = check_array("F", F)
    tok = check_length("token ids", token_ids, n, like="F")
    groups, inverse, counts = np.unique(tok, return_inverse=True, return_counts=True)
    keep_group = counts >= min_count
    if keep_group.sum() < 2:
        raise CrosslayerError(
            f"fewer than two distinct tokens occur >= {min_count} times",
            "lower min_count or pass more tokens",
        )
    g_sum = np.zeros((groups.size, m))
    total_sum, total_sq = np.zeros(m), np.zeros(m)
    for rows in row_chunks(n, chunk_size):
        keep = keep_group[inverse[rows]]
        f = np.asarray(F[rows], dtype=np.float64)[keep]
        g = inverse[rows][keep]
        onehot = scipy.sparse.csr_matrix(
            (np.ones(g.size), (g, np.arange(g.size))), shape=(groups.size, g.size)
        )
        g_sum += onehot @ f
        total_sum += f.sum(0)
        total_sq += (f**2).sum(0)
    n_kept = counts[keep_group].sum()
    kept_counts = np.where(keep_group, counts, 1)[:, None]
    correction = total_sum**2 / n_kept
    between = (g_sum**2 / kept_counts).sum(0) - correction
    total = total_sq - correction
    with np.errstate(divide="ignore", invalid="ignore"):
        eta2 = between / total
    # a relative tolerance: float64 round-off leaves ~1e-16·Σf² in a "constant" feature's total
    eta2[total <= 1e-12 * np.maximum(total_sq, 1e-300)] = np.nan
    return np.clip(eta2, 0.0, 1.0)
