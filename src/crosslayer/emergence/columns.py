"""Feature activations as the cross-fitted probes read them: dense blocks of a sparse matrix.

SAE codes are sparse (a few % of tokens per feature), and 80k tokens x 2,048 features dense
is 650 MB. The probes only ever ask for a block of columns (``F[:, j0:j1]``) or of rows
(``F[r0:r1]``), so :class:`DenseBlocks` hands out exactly those, densified on demand.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from crosslayer.crossfit import apply_rule, check_folds, count_positives
from crosslayer.crossfit.positives import PositiveCounts
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike


class DenseBlocks:
    """A sparse ``[n, m]`` matrix that returns dense float32 blocks when indexed."""

    def __init__(self, F: sp.spmatrix | sp.sparray) -> None:
        self.csc = sp.csc_matrix(F, dtype=np.float32)
        self._csr: sp.csr_matrix | None = None
        self.shape: tuple[int, int] = (int(self.csc.shape[0]), int(self.csc.shape[1]))
        self.ndim = 2

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            rows, cols = key
            block = self.csc[:, cols].toarray()
            return block if rows == slice(None) else block[rows]
        if self._csr is None:
            self._csr = self.csc.tocsr()
        return np.asarray(self._csr[key].toarray())


def as_blocks(F: ArrayLike) -> Any:
    """Sparse input wrapped in :class:`DenseBlocks`; dense input (array, tensor) unchanged."""
    if sp.issparse(F):
        return DenseBlocks(F)
    if isinstance(F, torch.Tensor):
        return F.detach().cpu().numpy()
    a = np.asarray(F)
    if a.ndim != 2:
        raise CrosslayerError(
            f"F must be a 2-D array [n_tokens, n_features], got shape {a.shape}",
            "pass one row of feature activations per token",
        )
    return a


def positives(F: Any, fold_ids: np.ndarray, *, min_fit: int, min_score: int) -> PositiveCounts:
    """The minimum-positives rule (:func:`crosslayer.crossfit.count_positives`) on F.

    For a sparse F the per-fold counts come straight from the non-zeros (one bincount), then
    go through the same :func:`~crosslayer.crossfit.apply_rule`.
    """
    if not isinstance(F, DenseBlocks):
        return count_positives(F, fold_ids, min_fit=min_fit, min_score=min_score)
    n, m = F.shape
    folds, K = check_folds(fold_ids, n)
    coo = F.csc.tocoo()
    active = coo.data > 0
    per_fold = np.bincount(folds[coo.row[active]] * m + coo.col[active], minlength=K * m).reshape(
        K, m
    )
    n_pos = per_fold.sum(0)
    n_fold = np.bincount(folds, minlength=K)
    return apply_rule(n_pos - per_fold, n - n_fold, n_pos, n, min_fit, min_score)
