"""Per-fold sufficient statistics and shared helpers of the cross-fitted probes.

Every fit in :mod:`crosslayer.crossfit` trains on a union of folds, so the sums it needs
(Σx, X'X, Σf, Σf², X'F) are kept per fold and added up per training set: the data are read
once, whatever the number of folds, inner splits and regularisation values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from crosslayer.crossfit.folds import check_folds
from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike, as_tensor, check_2d, colsum, row_chunks
from crosslayer.numerics import quiet_csr

F64 = torch.float64
# Blocks of F at most this dense also keep a sparse copy for X'F (TargetBlock.sparse_t);
# measured on CPU on real SAE codes (~4% dense, benchmarks/results/emergence.md): 0.5 s
# against 0.9-1.0 s per layer of the emergence matrix.
SPARSE_DENSITY = 0.1


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


@dataclass
class TargetBlock:
    """Columns ``j0:j1`` of F in fold order, centred, with the sums every fit on them needs."""

    j0: int
    j1: int
    f: torch.Tensor  # [n, c] float32, fold order, minus ``shift``
    shift: torch.Tensor  # [c] float64: the columns' means (an exact shift, undone by fits)
    raw_f2: np.ndarray  # [c] Σ f² before centring (to tell a constant column)
    sy: torch.Tensor  # [K, c] Σ per fold of the centred columns, float64
    syy: torch.Tensor  # [K, c] Σ² per fold of the centred columns, float64
    active: torch.Tensor | None  # [c, n] bool, f > threshold (fold order), when asked for
    # per fold k, the raw (uncentred) columns transposed [c, n_k] as CSR, when few are non-zero
    # (SAE codes: ~4%): X'F from them is ~2x faster on CPU than the dense product
    sparse_t: list[torch.Tensor] | None = None

    @classmethod
    def read(
        cls,
        F: ArrayLike,
        lay: FoldLayout,
        j0: int,
        j1: int,
        device: torch.device,
        threshold: float | None = None,
    ) -> TargetBlock:
        f = lay.targets(F, j0, j1, device)
        active = None if threshold is None else (f > threshold).T.contiguous()
        sparse_t = None
        if device.type == "cpu" and f.numel() and (f != 0).sum() <= SPARSE_DENSITY * f.numel():
            with quiet_csr():
                sparse_t = [f[lay.rows(k)].T.to_sparse_csr() for k in range(lay.n_folds)]
        # Centred (an exact shift, undone by the fits): a weak feature's X'F is a small
        # difference of large float32 sums otherwise.
        shift = colsum(f) / len(f)
        raw_f2 = colsum(f * f).cpu().numpy()
        f -= shift.float()
        sy = torch.stack([colsum(f[lay.rows(k)]) for k in range(lay.n_folds)])
        syy = torch.stack([colsum(f[lay.rows(k)].square()) for k in range(lay.n_folds)])
        return cls(j0, j1, f, shift, raw_f2, sy, syy, active, sparse_t)

    def cross(self, x: torch.Tensor, lay: FoldLayout, sx: torch.Tensor, k: int) -> torch.Tensor:
        """``Σ x f`` over fold ``k``'s rows, float64 ``[d, c]``, from the sparse raw columns:
        ``Σ x (f - shift) = Σ x f_raw - (Σ x) shiftᵀ``, with ``sx = Σ x`` over the fold."""
        assert self.sparse_t is not None
        with quiet_csr():
            raw = torch.sparse.mm(self.sparse_t[k], x[lay.rows(k)])
        return raw.T.double() - torch.outer(sx, self.shift)


class FoldTargets:
    """F read once for fits of several X on the same features and folds (e.g. one per layer).

    The blocks :class:`~crosslayer.crossfit.CrossFitRidge` reads from F (densified, sorted by
    fold, centred, summed per fold) are made here once and reused by every ``fit(X, self,
    fold_ids)``: the emergence matrix fits the same features from every layer. It holds F
    dense in float32 (``n x m x 4`` bytes), plus ``F > threshold`` as bools when a threshold is
    given (for the fits' out-of-fold AUROC).
    """

    def __init__(
        self,
        F: ArrayLike,
        fold_ids: ArrayLike,
        *,
        feature_chunk: int = 512,
        threshold: float | None = None,
        device: str | None = None,
    ) -> None:
        n, m = check_2d("F", F)
        if sp.issparse(F):
            F = SparseColumns(F)
        self.fold_ids, K = check_folds(fold_ids, n)
        self.layout = FoldLayout.from_ids(self.fold_ids, K)
        self.threshold = threshold
        self.shape = (n, m)
        dev = resolve_device(device)
        self.blocks = [
            TargetBlock.read(F, self.layout, j0, min(j0 + feature_chunk, m), dev, threshold)
            for j0 in range(0, m, max(1, feature_chunk))
        ]


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

    SAE codes are sparse (a few % of tokens per feature), and 80k tokens x 2,048 features
    dense is 650 MB. The estimators only ever ask for a block of columns (``F[:, j0:j1]``,
    optionally then rows) or of rows (``F[r0:r1]``), so these return dense float32 arrays of
    just that block; readers that stay sparse (the token lookup, the positives count) take
    :attr:`csc` itself.
    """

    ndim = 2

    def __init__(self, f: Any) -> None:
        self._f = sp.csc_matrix(f)
        self._rows: Any = None  # CSR copy, made on the first row read
        self.shape: tuple[int, int] = (int(self._f.shape[0]), int(self._f.shape[1]))

    @property
    def csc(self) -> Any:
        """The sparse matrix itself (CSC), for readers that keep it sparse."""
        return self._f

    @staticmethod
    def _dense(block: Any) -> np.ndarray:
        return np.asarray(block.toarray(), dtype=np.float32)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            rows, cols = key
            block = self._dense(self._f[:, cols])
            return block if rows == slice(None) else block[rows]
        if self._rows is None:
            self._rows = self._f.tocsr()
        return self._dense(self._rows[key])


def as_columns(F: ArrayLike) -> Any:
    """Sparse input wrapped in :class:`SparseColumns` (kept sparse); a tensor as a numpy
    array; a dense array unchanged (after checking it is 2-D)."""
    if isinstance(F, SparseColumns):
        return F
    if sp.issparse(F):
        return SparseColumns(F)
    if isinstance(F, torch.Tensor):
        return F.detach().cpu().numpy()
    a = np.asarray(F)
    if a.ndim != 2:
        raise CrosslayerError(
            f"F must be a 2-D array [n_tokens, n_features], got shape {a.shape}",
            "pass one row of feature activations per token",
        )
    return a
