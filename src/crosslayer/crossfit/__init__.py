"""Cross-fitted per-feature scores: grouped folds by document, every score out of fold.

See ``docs/metrics.md`` (section "Cross-fitted per-feature scores") for the definitions.
"""

from crosslayer.crossfit.folds import check_folds, grouped_folds
from crosslayer.crossfit.ridge import DEFAULT_ALPHAS, CrossFitRidge

__all__ = ["DEFAULT_ALPHAS", "CrossFitRidge", "check_folds", "grouped_folds"]
