"""The minimum-positives rule: which features have enough active tokens to fit and to score.

A probe fitted on a handful of active tokens, or scored on a handful, measures the noise of
those tokens rather than the feature. A feature is

* *alive* when it is active on at least one token of every training set ``T_k`` (decided on
  training data only: the tokens a fold is scored on never decide whether it is scored);
* *fitted* when every ``T_k`` holds at least ``min_fit`` active and ``min_fit`` inactive tokens;
* *scored* when, in addition, the pooled out-of-fold tokens hold at least ``min_score`` of
  each class.

Each excluded feature gets the first reason it fails, in the order of :data:`REASONS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from crosslayer.crossfit.folds import check_folds
from crosslayer.crossfit.stats import check_targets
from crosslayer.metrics import ArrayLike, as_tensor, row_chunks

OK = "ok"
DEAD = "dead in training (never active in some training folds)"
FEW_POS_FIT = "too few active tokens to fit"
FEW_NEG_FIT = "too few inactive tokens to fit"
FEW_POS_SCORE = "too few active tokens to score"
FEW_NEG_SCORE = "too few inactive tokens to score"
REASONS: tuple[str, ...] = (DEAD, FEW_POS_FIT, FEW_NEG_FIT, FEW_POS_SCORE, FEW_NEG_SCORE)


@dataclass
class PositiveCounts:
    """Active-token counts per feature and the rule's verdict."""

    n_pos_train: np.ndarray  # [K, m] active tokens in each training set T_k
    n_train: np.ndarray  # [K] tokens in each T_k
    n_pos: np.ndarray  # [m] active tokens over all folds (each scored once)
    n: int
    status: np.ndarray  # [m] "ok" or the first reason in REASONS
    min_fit: int
    min_score: int
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> number of features

    @property
    def alive(self) -> np.ndarray:
        return np.asarray((self.n_pos_train > 0).all(0))

    @property
    def scorable(self) -> np.ndarray:
        return self.status == OK


def count_positives(
    F: ArrayLike,
    fold_ids: ArrayLike,
    *,
    threshold: float = 0.0,
    min_fit: int = 100,
    min_score: int = 20,
    chunk_size: int = 16384,
) -> PositiveCounts:
    """Count active (``> threshold``) tokens per fold and apply the rule to each feature.

    ``F``: dense rows, a scipy sparse matrix or a :class:`~crosslayer.crossfit.stats.
    SparseColumns` (counted from its non-zeros, one bincount, when ``threshold >= 0``)."""
    n = len(np.asarray(fold_ids).reshape(-1))
    m = check_targets(F, n)
    folds, K = check_folds(fold_ids, n)
    src = F if sp.issparse(F) else getattr(F, "csc", None)
    if src is not None and threshold >= 0:
        # sparse: the implicit zeros are inactive, so the counts come from the non-zeros
        coo = sp.coo_matrix(src)
        on = coo.data > threshold
        cells = folds[coo.row[on]] * m + coo.col[on]
        per_fold = np.bincount(cells, minlength=K * m).reshape(K, m).astype(np.int64)
    else:
        per_fold = np.zeros((K, m), dtype=np.int64)
        for rows in row_chunks(n, chunk_size):
            block = F[rows]
            block = block.toarray() if sp.issparse(block) else block
            active = (as_tensor(block, torch.device("cpu")) > threshold).long()
            fr = torch.as_tensor(folds[rows])
            per_fold += torch.zeros(K, m, dtype=torch.long).index_add_(0, fr, active).numpy()
    n_fold = np.bincount(folds, minlength=K)
    return apply_rule(
        per_fold.sum(0) - per_fold, n - n_fold, per_fold.sum(0), n, min_fit, min_score
    )


def apply_rule(
    n_pos_train: np.ndarray,
    n_train: np.ndarray,
    n_pos: np.ndarray,
    n: int,
    min_fit: int = 100,
    min_score: int = 20,
) -> PositiveCounts:
    """The rule on given counts (``n_pos_train [K, m]``, ``n_train [K]``, ``n_pos [m]``)."""
    n_neg_train = n_train[:, None] - n_pos_train
    fails = [
        (n_pos_train == 0).any(0),
        (n_pos_train < min_fit).any(0),
        (n_neg_train < min_fit).any(0),
        n_pos < min_score,
        n - n_pos < min_score,
    ]
    status = np.full(n_pos.shape, OK, dtype=object)
    for reason, fail in zip(reversed(REASONS), reversed(fails), strict=True):
        status[fail] = reason  # reversed, so the first failing reason is written last
    excluded = {r: int((status == r).sum()) for r in REASONS}
    return PositiveCounts(n_pos_train, n_train, n_pos, n, status, min_fit, min_score, excluded)
