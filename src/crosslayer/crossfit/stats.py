"""Per-fold sufficient statistics and shared helpers of the cross-fitted probes.

Every fit in :mod:`crosslayer.crossfit` trains on a union of folds, so the sums it needs
(Σx, X'X, Σf, Σf², X'F) are kept per fold and added up per training set: the data are read
once, whatever the number of folds, inner splits and regularisation values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike, as_tensor, check_2d, row_chunks

F64 = torch.float64


def load_sorted(
    X: ArrayLike, order: np.ndarray, device: torch.device, chunk_size: int = 8192
) -> torch.Tensor:
    """Rows ``X[order]`` as one float32 tensor, read by chunks (X may be a memmap)."""
    _, d = check_2d("X", X)
    out = torch.empty(len(order), d, dtype=torch.float32, device=device)
    for rows in row_chunks(len(order), chunk_size):
        out[rows] = as_tensor(X[order[rows]], device)
    return out


def check_targets(F: ArrayLike, n: int) -> int:
    """Validate ``F [n, m]`` against ``n`` rows of X; returns ``m``."""
    rows, m = check_2d("F", F)
    if rows != n:
        raise CrosslayerError(
            f"X has {n} rows but F has {rows}", "pass feature activations for the same tokens"
        )
    return m


@dataclass
class FoldLayout:
    """Tokens sorted by fold: ``order`` maps sorted rows to input rows, ``bounds[k]:bounds[k+1]``
    are fold ``k``'s rows."""

    fold_ids: np.ndarray
    n_folds: int
    order: np.ndarray
    bounds: np.ndarray

    @classmethod
    def from_ids(cls, fold_ids: np.ndarray, n_folds: int) -> FoldLayout:
        order = np.argsort(fold_ids, kind="stable")
        bounds = np.searchsorted(fold_ids[order], np.arange(n_folds + 1))
        return cls(fold_ids, n_folds, order, bounds)

    def rows(self, k: int) -> slice:
        return slice(int(self.bounds[k]), int(self.bounds[k + 1]))

    def targets(self, F: ArrayLike, j0: int, j1: int, device: torch.device) -> torch.Tensor:
        """Columns ``j0:j1`` of F in fold order, float32."""
        f = F[:, j0:j1]
        if isinstance(f, torch.Tensor):
            return as_tensor(f[torch.as_tensor(self.order)], device)
        return as_tensor(np.ascontiguousarray(np.asarray(f)[self.order]), device)


def standardisation(
    n: float, sum_x: torch.Tensor, sum_xx_diag: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population std of X from its sums (float64); a constant column gets scale 1,
    as scikit-learn's ``StandardScaler`` does, so it contributes nothing instead of NaN."""
    mean = sum_x / n
    var = (sum_xx_diag / n - mean**2).clamp(min=0.0)
    scale = var.sqrt()
    tiny = 1e-12 * float(scale.max().clamp(min=1e-300))
    return mean, torch.where(scale > tiny, scale, torch.ones_like(scale))


class SparseColumns:
    """A scipy sparse matrix ``[n, m]`` read as dense blocks, the way the estimators read F.

    ``F[:, j0:j1]`` and ``F[rows]`` return dense float32 arrays of just that block, so a run's
    2,048 sparse features never exist as one dense ``[n, m]`` array (the logistic probes read
    their 0/1 labels through ``logistic._Active`` on top of it).
    """

    def __init__(self, f: Any) -> None:
        self._f = f.tocsc()
        self._rows: Any = None  # CSR copy, made on the first row read
        self.shape = self._f.shape

    @staticmethod
    def _dense(block: Any) -> np.ndarray:
        return np.asarray(block.toarray(), dtype=np.float32)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            rows, cols = key
            if rows != slice(None):
                raise CrosslayerError(
                    "SparseColumns reads whole columns or whole rows", "index as F[:, j0:j1]"
                )
            return self._dense(self._f[:, cols])
        if self._rows is None:
            self._rows = self._f.tocsr()
        return self._dense(self._rows[key])
