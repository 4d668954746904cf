"""``decompose``: out-of-fold predictions of late layers by document folds, scored per document.

For every layer ``y`` and fold ``k`` each predictor is fitted on the other folds only and
predicts fold ``k``; its squared errors go straight into per-document sums
(:class:`~crosslayer.decomposition.scores.LayerScores`), so no prediction matrix is kept
(except the rows asked for in ``keep_rows``, for splicing them into the model). The
predictors, in order of what they may use:

* ``mean``: the training folds' per-dimension mean;
* ``linear``: ridge on the current row's X (:mod:`.ridge`);
* ``token``: ``linear`` plus the token's shrunk mean residual (:mod:`.token`);
* ``context_k``: ridge on the current row and the k before it in its context (:mod:`.design`);
* ``rest = 1 - best``: what none of them explains (longer context, computation).

The X side (per-fold sums, one eigendecomposition per training set and design) is shared by
all layers, so a depth sweep pays it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crosslayer.crossfit import DEFAULT_ALPHAS, check_folds
from crosslayer.crossfit.stats import F64
from crosslayer.decomposition.design import LagDesign, lag_design
from crosslayer.decomposition.ridge import FoldSums, NestedRidge, TargetSums
from crosslayer.decomposition.scores import LayerScores, bootstrap_weights
from crosslayer.decomposition.token import DEFAULT_STRENGTHS, TokenSums, token_offsets
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike, check_2d, row_chunks


def predictor_names(max_lag: int) -> list[str]:
    """``mean, linear, token, context_1 … context_{max_lag}``."""
    return ["mean", "linear", "token", *[f"context_{k}" for k in range(1, max_lag + 1)]]


@dataclass
class Decomposition:
    """Per layer: the scores of :meth:`LayerScores.summarise` plus the chosen strengths."""

    layers: dict[str, dict[str, Any]]
    kept: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # layer → name → rows
    keep_rows: np.ndarray | None = None


@dataclass
class _Rows:
    """Rows of each fold, in chunks."""

    folds: list[np.ndarray]
    chunk: int

    def chunks(self, f: int) -> list[np.ndarray]:
        r = self.folds[f]
        return [r[s] for s in row_chunks(len(r), self.chunk)]


def _x_sums(design: LagDesign, rows: _Rows) -> FoldSums:
    w = design.width(design.max_lag)
    K = len(rows.folds)
    sx, sxx = torch.zeros(K, w, dtype=F64), torch.zeros(K, w, w, dtype=F64)
    for f in range(K):
        for idx in rows.chunks(f):
            z = torch.from_numpy(design.rows(idx))
            sx[f] += z.sum(0, dtype=F64)
            sxx[f] += (z.T @ z).double()
    return FoldSums(np.array([len(r) for r in rows.folds], dtype=np.float64), sx, sxx)


def _y_sums(design: LagDesign, rows: _Rows, y: np.ndarray) -> TargetSums:
    K, m, w = len(rows.folds), y.shape[1], design.width(design.max_lag)
    sy, syy = torch.zeros(K, m, dtype=F64), torch.zeros(K, m, dtype=F64)
    sxy = torch.zeros(K, w, m, dtype=F64)
    for f in range(K):
        for idx in rows.chunks(f):
            z, t = torch.from_numpy(design.rows(idx)), torch.from_numpy(y[idx])
            sy[f] += t.sum(0, dtype=F64)
            syy[f] += t.double().square().sum(0)
            sxy[f] += (z.T @ t).double()
    return TargetSums(sy, syy, sxy)


def _token_sums(
    design: LagDesign, rows: _Rows, tok: np.ndarray
) -> tuple[TokenSums, list[np.ndarray]]:
    G = int(tok.max()) + 1
    ids, count, sx, local = [], [], [], []
    for r in rows.folds:
        u, loc = np.unique(tok[r], return_inverse=True)
        s = torch.zeros(len(u), design.d, dtype=F64)
        s.index_add_(0, torch.as_tensor(loc), torch.from_numpy(design.rows(r, 0)).double())
        ids.append(torch.as_tensor(u, dtype=torch.int64))
        count.append(torch.as_tensor(np.bincount(loc, minlength=len(u)), dtype=F64))
        sx.append(s)
        local.append(loc)
    return TokenSums(ids, count, sx, G), local


def _load(Y: ArrayLike, n: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    rows, m = check_2d("Y", Y)
    if rows != n:
        raise CrosslayerError(
            f"a layer has {rows} rows, X has {n}", "pass every layer for the same store rows"
        )
    y = np.empty((n, m), dtype=np.float32)
    for r in row_chunks(n, chunk):
        y[r] = np.asarray(Y[r], dtype=np.float32)
    if not np.isfinite(y).all():
        raise CrosslayerError("a layer contains NaN or inf", "re-collect the activations")
    mean = y.mean(0, dtype=np.float64)
    y -= mean.astype(np.float32)  # exact shift, added back to kept predictions
    return y, mean


def decompose(
    X: ArrayLike,
    layers: Mapping[str, ArrayLike],
    token_ids: ArrayLike,
    context_ids: ArrayLike,
    doc_ids: ArrayLike,
    fold_ids: ArrayLike,
    *,
    max_lag: int = 4,
    lag_rank: int | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    n_bootstrap: int = 1000,
    seed: int = 0,
    keep_rows: ArrayLike | None = None,
    keep_layers: Sequence[str] = (),
    chunk_size: int = 4096,
) -> Decomposition:
    """Decompose every layer in ``layers`` (``{hook: [n, m]}``, rows aligned with ``X``).

    ``fold_ids`` from :func:`crosslayer.crossfit.grouped_folds` over ``doc_ids``; rows in
    store order (a context's rows contiguous). ``keep_rows``: rows whose out-of-fold
    predictions of ``keep_layers`` are returned in :attr:`Decomposition.kept`.
    """
    n, _ = check_2d("X", X)
    folds, K = check_folds(fold_ids, n)
    tok = np.unique(np.asarray(token_ids).reshape(-1), return_inverse=True)[1]
    docs = np.unique(np.asarray(doc_ids).reshape(-1), return_inverse=True)[1]
    if len(tok) != n or len(docs) != n:
        raise CrosslayerError(
            "token_ids and doc_ids must have one entry per row of X", "pass the store's arrays"
        )
    if any(a <= 0 for a in alphas):
        raise CrosslayerError(f"alphas must be > 0, got {alphas}", "use e.g. DEFAULT_ALPHAS")
    design = lag_design(X, context_ids, max_lag, lag_rank, chunk_size)
    rows = _Rows([np.flatnonzero(folds == f) for f in range(K)], chunk_size)
    x_sums = _x_sums(design, rows)
    toks, local = _token_sums(design, rows, tok)
    weights = bootstrap_weights(int(docs.max()) + 1, n_bootstrap, seed)
    keep = None if keep_rows is None else np.sort(np.asarray(keep_rows, dtype=np.int64))
    kept: dict[str, dict[str, np.ndarray]] = {h: {} for h in keep_layers if keep is not None}
    names = list(layers)
    doc_t = torch.as_tensor(docs)
    scores = {h: LayerScores(doc_t, int(docs.max()) + 1) for h in names}
    y_sums: dict[str, TargetSums] = {}
    means: dict[str, np.ndarray] = {}
    chosen: dict[str, dict[str, list[float]]] = {h: {} for h in names}
    for h in names:
        y, means[h] = _load(layers[h], n, chunk_size)
        y_sums[h] = _y_sums(design, rows, y)
        for f in range(K):
            scores[h].set_target(rows.folds[f], y[rows.folds[f]])

    def record(h: str, name: str, idx: np.ndarray, pred: np.ndarray, y: np.ndarray) -> None:
        scores[h].add(name, idx, y[idx] - pred)
        if h in kept and keep is not None:
            pos = np.searchsorted(keep, idx)
            hit = (pos < len(keep)) & (keep[np.minimum(pos, len(keep) - 1)] == idx)
            store = kept[h].setdefault(name, np.zeros((len(keep), y.shape[1]), np.float32))
            store[pos[hit]] = pred[hit] + means[h].astype(np.float32)

    for k in range(max_lag + 1):
        w = design.width(k)
        ridge = NestedRidge(x_sums.width(w), np.asarray(alphas, dtype=np.float64))
        name = "linear" if k == 0 else f"context_{k}"
        for h in names:
            y, _ = _load(layers[h], n, chunk_size)
            ys = y_sums[h].width(w)
            fit = ridge.fit(ys)
            chosen[h][name] = fit.alpha.tolist()
            sy_tok = toks.target(rows.folds, local, y) if k == 0 else []
            lam: list[float] = []
            for f in range(K):
                offset = None
                if k == 0:
                    offset, lam_f = token_offsets(
                        f, toks, sy_tok, x_sums.width(w), ys, fit.W[f], fit.b[f], tuple(strengths)
                    )
                    lam.append(float(np.median(lam_f)))
                    nu = ((ys.sy.sum(0) - ys.sy[f]) / (n - len(rows.folds[f]))).float().numpy()
                for idx in rows.chunks(f):
                    pred = design.rows(idx, k) @ fit.W[f] + fit.b[f].astype(np.float32)
                    record(h, name, idx, pred, y)
                    if offset is not None:
                        record(h, "mean", idx, np.broadcast_to(nu, pred.shape), y)
                        record(h, "token", idx, pred + offset[torch.as_tensor(tok[idx])].numpy(), y)
            if k == 0:
                chosen[h]["token_strength_median"] = lam
        del ridge
    rest_of = [p for p in predictor_names(max_lag) if p != "mean"]
    out: dict[str, dict[str, Any]] = {}
    for h in names:
        out[h] = scores[h].summarise(weights, rest_of)
        out[h]["alpha"] = chosen[h]
    return Decomposition(out, kept, keep)
