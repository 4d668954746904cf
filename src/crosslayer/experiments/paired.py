"""Paired statistics for "is the direct answer scored higher than the evasive one?".

Every item gives a pair of values (direct, evasive) of some score: a cosine to the question,
or the model's log-likelihood. The effect is the per-item difference; it is judged with a
bootstrap CI of its mean, a Wilcoxon signed-rank test, the standardised effect dz, the AUROC
of the raw values as a direct-vs-evasive classifier (unpaired) and the paired AUROC (the win
rate: the share of items whose direct value beats their evasive one, which is what a reader who
is shown both answers of an item can use). Whether one score adds to others is a
cross-validated conditional-logistic comparison (see :func:`adds_to_baseline`); how large an
effect the item count can detect is :func:`min_detectable_dz`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold


@dataclass(frozen=True)
class PairedStats:
    n: int  # pairs used (pairs with a NaN value are dropped)
    mean_direct: float
    mean_evasive: float
    mean_diff: float  # mean of direct - evasive
    ci_low: float  # 95% percentile-bootstrap CI of mean_diff
    ci_high: float
    p_wilcoxon: float  # two-sided signed-rank p of the differences
    auroc: float  # direct values (label 1) vs evasive values (label 0), unpaired
    win_rate: float  # share of items with direct > evasive (ties count one half)
    auroc_paired: float  # the same win rate, under the name the plots use
    dz: float  # mean_diff / sd(diff): the paired standardised effect (Cohen's dz)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_stats(
    direct: np.ndarray, evasive: np.ndarray, *, n_resamples: int = 2000, seed: int = 0
) -> PairedStats:
    """Statistics of ``direct - evasive`` over items; NaN pairs are dropped."""
    d, e = np.asarray(direct, np.float64), np.asarray(evasive, np.float64)
    keep = np.isfinite(d) & np.isfinite(e)
    d, e = d[keep], e[keep]
    diff = d - e
    n = len(diff)
    if n < 2:
        nan = float("nan")
        return PairedStats(n, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan)
    if np.ptp(diff) == 0:  # no spread: the bootstrap CI is the point, the test has no ranks
        lo = hi = float(diff[0])
        p = 1.0 if diff[0] == 0 else float(2 * 0.5**n)  # every sign the same: exact sign test
    else:
        ci = stats.bootstrap(
            (diff,), np.mean, n_resamples=n_resamples, method="percentile", random_state=seed
        ).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
        p = float(stats.wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    labels = np.r_[np.ones(n), np.zeros(n)]
    sd = float(diff.std(ddof=1))
    win = paired_auroc(d, e)
    return PairedStats(
        n=n,
        mean_direct=float(d.mean()),
        mean_evasive=float(e.mean()),
        mean_diff=float(diff.mean()),
        ci_low=lo,
        ci_high=hi,
        p_wilcoxon=p,
        auroc=float(roc_auc_score(labels, np.r_[d, e])),
        win_rate=win,
        auroc_paired=win,
        dz=float(diff.mean() / sd) if sd > 0 else float("nan"),
    )


def paired_auroc(direct: np.ndarray, evasive: np.ndarray) -> float:
    """Paired AUROC: the share of items whose direct value is above their evasive one (ties
    count one half). The unpaired AUROC compares every direct value with every evasive one, so
    differences between items (one item's answers both long, another's both short) dilute it."""
    diff = np.asarray(direct, np.float64) - np.asarray(evasive, np.float64)
    diff = diff[np.isfinite(diff)]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0)) if diff.size else float("nan")


def min_detectable_dz(n: int, n_tests: int = 1, *, alpha: float = 0.05, power: float = 0.8
                      ) -> float:  # fmt: skip
    """Smallest paired effect dz that a two-sided paired t-test on ``n`` items detects with
    ``power`` at level ``alpha / n_tests``: Benjamini-Hochberg's level when only one of
    ``n_tests`` layers has an effect (its worst case; with ``n_tests=1``, BH when every layer
    has one). Exact noncentral t. The Wilcoxon test used for the p-values has about 95% of the
    t-test's efficiency on normal data, so it needs a few more items for the same power."""
    if n < 2:
        return float("nan")
    df, level = n - 1, alpha / max(n_tests, 1)
    crit = float(stats.t.ppf(1 - level / 2, df))

    def shortfall(dz: float) -> float:
        nc = dz * np.sqrt(n)
        got = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
        return (got if np.isfinite(got) else 1.0) - power  # NaN only far in the tail

    # the normal approximation, doubled, brackets the root
    normal = (stats.norm.ppf(1 - level / 2) + stats.norm.ppf(power)) / np.sqrt(n)
    return float(optimize.brentq(shortfall, 1e-6, 2 * normal + 1.0))


def adjust_pvalues(p: list[float], method: str = "bh") -> list[float]:
    """Benjamini-Hochberg adjusted p-values (NaN kept as NaN), one test per layer."""
    arr = np.asarray(p, np.float64)
    out = np.full_like(arr, np.nan)
    ok = np.isfinite(arr)
    if ok.any():
        out[ok] = stats.false_discovery_control(arr[ok], method=method)
    return [float(x) for x in out]


def _pair_probs(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Conditional logistic model for pairs: P(first of the pair is direct) = σ(β·Δx).

    A pair's likelihood does not depend on an intercept, so the model has none; it is fitted
    as an ordinary logistic regression on (Δx, 1) and (-Δx, 0), which has the same maximiser.
    Features are scaled (not centred, centring would break the symmetry) and lightly
    L2-penalised so that a perfectly separating score does not diverge.
    """
    scale = np.sqrt(np.mean(train**2, axis=0)) + 1e-12
    x = train / scale
    clf = LogisticRegression(fit_intercept=False, C=1.0)
    clf.fit(np.r_[x, -x], np.r_[np.ones(len(x)), np.zeros(len(x))])
    return np.asarray(clf.predict_proba(test / scale)[:, 1])


def adds_to_baseline(
    score_diff: np.ndarray, baseline_diff: np.ndarray, *, n_splits: int = 10, seed: int = 0
) -> dict[str, float]:
    """Does a score tell direct from evasive beyond what baseline scores already say?

    Both arguments are per-item differences (direct - evasive); ``baseline_diff`` is [n] or
    [n, k] (a baseline and its covariates, e.g. PMI, the unconditional log-likelihood and the
    answer length). Out-of-fold log-loss of the pair model with the baseline alone is compared
    with baseline + score; ``p_adds`` is a one-sided Wilcoxon test that the per-item loss
    drops. ``spearman`` says how redundant the score is with the first baseline column.
    """
    s = np.asarray(score_diff, np.float64)
    b2 = np.asarray(baseline_diff, np.float64).reshape(len(s), -1)
    keep = np.isfinite(s) & np.isfinite(b2).all(1)
    s, b2 = s[keep], b2[keep]
    b = b2[:, 0]
    n = len(s)
    nan = float("nan")
    if n < 4 or np.ptp(s) == 0:
        return {"n": n, "spearman": nan, "logloss_baseline": nan, "logloss_both": nan,
                "p_adds": nan}  # fmt: skip
    both, k = np.c_[b2, s], b2.shape[1]
    loss_base, loss_both = np.empty(n), np.empty(n)
    folds = KFold(n_splits=min(n_splits, n), shuffle=True, random_state=seed)
    for train, test in folds.split(both):
        loss_base[test] = -np.log(_pair_probs(both[train, :k], both[test, :k]))
        loss_both[test] = -np.log(_pair_probs(both[train], both[test]))
    gain = loss_base - loss_both
    p = float(stats.wilcoxon(gain, alternative="greater").pvalue) if np.any(gain != 0) else 1.0
    return {
        "n": n,
        "spearman": float(stats.spearmanr(s, b).statistic) if np.ptp(b) > 0 else nan,
        "logloss_baseline": float(loss_base.mean()),
        "logloss_both": float(loss_both.mean()),
        "p_adds": p,
    }
