"""The linear algebra shared by transcoders, probes, the depth sweep and torchrun reductions.

Two ideas, one module each:

* :mod:`~crosslayer.linalg.stats`: :class:`SufficientStats`, the float64 sums (n, Σx, Σy, Σy²,
  X'X, X'Y) that every least-squares fit here is computed from. They are additive, so they
  stream over batches, all-reduce over ranks and accept merged rows (one row standing for
  ``count`` identical tokens: :meth:`SufficientStats.from_weighted_rows`).
* :mod:`~crosslayer.linalg.ridge`: :class:`RidgeEigen` decomposes the train covariance once and
  gives ridge coefficients, held-out error and GCV for any alpha and any block of targets;
  :func:`solve_ridge` picks alpha and reports both splits from statistics alone. Its eigen
  primitives (:func:`eigh_psd`, :func:`inverse_or_zero`, :func:`sse_from_stats`,
  :func:`sse_path_per_target`, :class:`PenaltyPath`) are also what the cross-fitted probes
  (:mod:`crosslayer.crossfit`) and the layer decomposition build their ridge paths from.

Array checks and the streaming regression metrics live one layer below, in
:mod:`crosslayer.metrics`; everything here is built on them.
"""

from crosslayer.linalg.ridge import (
    DEFAULT_ALPHAS,
    PenaltyPath,
    RidgeEigen,
    RidgeSolution,
    eigh_psd,
    inverse_or_zero,
    solve_ridge,
    sse_from_stats,
    sse_path_per_target,
)
from crosslayer.linalg.stats import SufficientStats, accumulate, load_rows

__all__ = [
    "DEFAULT_ALPHAS",
    "PenaltyPath",
    "RidgeEigen",
    "RidgeSolution",
    "SufficientStats",
    "accumulate",
    "eigh_psd",
    "inverse_or_zero",
    "load_rows",
    "solve_ridge",
    "sse_from_stats",
    "sse_path_per_target",
]
