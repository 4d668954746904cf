"""Cross-fitted per-feature scores: grouped folds by document, every score out of fold.

* :func:`grouped_folds`: K folds by document id, balanced by tokens, seeded.
* :class:`CrossFitRidge`: ridge probes, alpha per feature by grouped inner CV, out-of-fold R².
* :class:`CrossFitLogistic`: class-balanced logistic probes, C per feature by grouped inner CV,
  each converged to its own tolerance; out-of-fold balanced accuracy and AUROC.
* :func:`token_lookup_r2`: cross-fitted, shrunk E[f | token] R² with a permutation null.
* :func:`count_positives`: the minimum-positives rule, with exclusions counted per reason.

Definitions: ``docs/metrics.md``, section "Cross-fitted per-feature scores".
"""

from crosslayer.crossfit.context import lag_valid, lagged
from crosslayer.crossfit.folds import check_folds, grouped_folds
from crosslayer.crossfit.lbfgs import LBFGSResult, batched_lbfgs
from crosslayer.crossfit.logistic import DEFAULT_CS, CrossFitLogistic
from crosslayer.crossfit.positives import REASONS, PositiveCounts, apply_rule, count_positives
from crosslayer.crossfit.ranks import auroc, auroc_of
from crosslayer.crossfit.ridge import DEFAULT_ALPHAS, CrossFitRidge
from crosslayer.crossfit.token_lookup import DEFAULT_STRENGTHS, TokenLookupResult, token_lookup_r2

__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_CS",
    "DEFAULT_STRENGTHS",
    "REASONS",
    "CrossFitLogistic",
    "CrossFitRidge",
    "LBFGSResult",
    "PositiveCounts",
    "TokenLookupResult",
    "apply_rule",
    "auroc",
    "auroc_of",
    "batched_lbfgs",
    "check_folds",
    "count_positives",
    "grouped_folds",
    "lag_valid",
    "lagged",
    "token_lookup_r2",
]
