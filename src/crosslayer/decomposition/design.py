"""The nested design matrices of the ridge predictors: the current token, then its k lags.

One design holds every predictor's columns, ordered so that the design of ``context_k`` is
its first ``width(k)`` columns::

    [x_t | z_{t-1}, present_1 | z_{t-2}, present_2 | … | z_{t-K}, present_K]

``z = x`` (the full :func:`crosslayer.crossfit.lagged` design, up to column order, which a
ridge on standardised columns does not see) or, with ``lag_rank = r``, ``z = x P`` with P the
top-r principal directions of X: the previous tokens enter through r numbers each, which
keeps the largest design ``d + K (r + 1)`` wide instead of ``(K+1) d + K``. P is fitted on X
alone (no target), so it leaks nothing about the scored rows. A lag that would cross a
context (or start) is zeros with ``present_i = 0`` (:func:`crosslayer.crossfit.lag_valid`).
``linear`` is the design of ``k = 0``: the current row alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crosslayer.crossfit import lag_valid
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike, check_2d, row_chunks


@dataclass
class LagDesign:
    """Builds rows of the nested design from X (float32, centred on the columns' means)."""

    x: np.ndarray  # [n, d] float32
    z: np.ndarray  # [n, r] float32: what a lag contributes (x itself, or x P)
    valid: np.ndarray  # [n, K] bool
    max_lag: int
    shift: np.ndarray  # [width(K)] column means, subtracted from every built row

    @property
    def d(self) -> int:
        return int(self.x.shape[1])

    @property
    def r(self) -> int:
        return int(self.z.shape[1])

    def width(self, k: int) -> int:
        """Columns of the ``context_k`` design (``k = 0``: linear)."""
        return self.d + k * (self.r + 1)

    def rows(self, idx: np.ndarray, k: int | None = None) -> np.ndarray:
        """Design rows ``idx`` (store order indices), first ``width(k)`` columns, centred."""
        k = self.max_lag if k is None else k
        out = np.empty((len(idx), self.width(k)), dtype=np.float32)
        out[:, : self.d] = self.x[idx]
        for i in range(1, k + 1):
            c0 = self.width(i - 1)
            ok = self.valid[idx, i - 1]
            block = np.zeros((len(idx), self.r), dtype=np.float32)
            block[ok] = self.z[idx[ok] - i]
            out[:, c0 : c0 + self.r] = block
            out[:, c0 + self.r] = ok
        out -= self.shift[: out.shape[1]]
        return out


def lag_design(
    X: ArrayLike,
    context_ids: ArrayLike,
    max_lag: int = 4,
    lag_rank: int | None = None,
    chunk_size: int = 8192,
) -> LagDesign:
    """The nested design of ``X [n, d]`` (rows in store order: a context's rows contiguous)."""
    n, d = check_2d("X", X)
    if max_lag < 0 or (lag_rank is not None and not 1 <= lag_rank <= d):
        raise CrosslayerError(
            f"bad design settings max_lag={max_lag}, lag_rank={lag_rank} (d={d})",
            "use max_lag >= 0 and lag_rank None or between 1 and the width of X",
        )
    x = np.empty((n, d), dtype=np.float32)
    for rows in row_chunks(n, chunk_size):
        x[rows] = np.asarray(X[rows], dtype=np.float32)
    if not np.isfinite(x).all():
        raise CrosslayerError("X contains NaN or inf", "re-collect the source activations")
    # Lags are built from the raw rows (an absent lag is a zero row, as in `lagged`) and every
    # column is then shifted by its mean: an exact reparametrisation, as each fit
    # re-centres from its own sums, that keeps the float32 products of X'X precise.
    if lag_rank is None or lag_rank == d:
        z = x
    else:
        mean = x.mean(0, dtype=np.float64)
        xc = x.astype(np.float64) - mean
        _, vecs = np.linalg.eigh(xc.T @ xc / n)
        z = np.ascontiguousarray(x @ vecs[:, ::-1][:, :lag_rank].astype(np.float32))
    valid = lag_valid(context_ids, max_lag)
    if len(valid) != n:
        raise CrosslayerError(
            f"context_ids has {len(valid)} entries for {n} rows of X", "pass one id per row"
        )
    design = LagDesign(x, z, valid, max_lag, np.zeros(d + max_lag * (z.shape[1] + 1), np.float32))
    total = np.zeros(design.width(max_lag))
    for rows in row_chunks(n, chunk_size):
        total += design.rows(np.arange(rows.start, rows.stop)).sum(0, dtype=np.float64)
    design.shift = (total / n).astype(np.float32)
    return design
