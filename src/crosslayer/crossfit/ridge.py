"""Cross-fitted ridge probes: per-feature alpha by grouped inner CV, out-of-fold R².

For each outer fold ``k`` the probe of feature ``j`` is fitted on the other folds ``T_k``, on X
standardised with ``T_k``'s mean and std, with the penalty ``alpha_kj`` that minimises the
summed squared error of leave-one-fold-out fits inside ``T_k`` (each inner fit trains on
``T_k \\ {i}`` and is scored on fold ``i``). It then predicts fold ``k``. R² pools the squared
errors of all folds: ``1 - Σ_k SSE_k / Σ_i (f_i - f̄)²``.

Everything comes from per-fold sufficient statistics (:mod:`.stats`); the eigen and ridge-path
primitives are :mod:`crosslayer.linalg`'s, this module keeps the cross-fitting. Each training
set is eigendecomposed once, ``Cxx = V Λ Vᵀ`` in float64, and serves every alpha and every feature:
``w(α) = V diag(1/(λ+α)) Vᵀ Cxf``, and a validation fold's squared error for every alpha
follows from the validation statistics alone (``c - 2 Σ D a + (D∘Q)ᵀ M (D∘Q)``, no second
pass over the tokens); by partial fractions one float64 product per block of features serves
every alpha (:class:`~crosslayer.linalg.PenaltyPath`). The inner training set ``T_k \\ {i}``
is the same for ``(k, i)`` and ``(i, k)``, so K(K-1)/2 + K eigendecompositions serve the
whole nested CV.

``alpha`` is relative: on standardised X it equals scikit-learn ``Ridge(alpha=alpha * n_train)``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from sklearn.base import BaseEstimator

from crosslayer.crossfit.folds import check_folds
from crosslayer.crossfit.ranks import auroc_rows
from crosslayer.crossfit.stats import (
    F64,
    FoldLayout,
    FoldTargets,
    TargetBlock,
    check_targets,
    load_sorted,
    standardisation,
)
from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError
from crosslayer.linalg.ridge import (
    PenaltyPath,
    eigh_psd,
    inverse_or_zero,
    sse_from_stats,
    sse_path_per_target,
)
from crosslayer.metrics import ArrayLike, check_2d, colsum, row_chunks

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-6, 2, 17))


class _Train:
    """One training set (a union of folds): its standardisation and eigendecomposition."""

    def __init__(self, folds: list[int], n: float, sx: torch.Tensor, sxx: torch.Tensor) -> None:
        self.folds, self.n = folds, n
        self.mean, self.scale = standardisation(n, sx, sxx.diagonal())
        g = (sxx - n * torch.outer(self.mean, self.mean)) / torch.outer(self.scale, self.scale)
        self.evals, self.V = eigh_psd(g / n)

    def centred_val(self, n: float, sx: torch.Tensor, sxx: torch.Tensor) -> torch.Tensor:
        """Validation scatter ``Σ (xs - 0)(xs - 0)ᵀ`` in this set's standardised coordinates."""
        mu = self.mean
        g = sxx - torch.outer(sx, mu) - torch.outer(mu, sx) + n * torch.outer(mu, mu)
        return g / torch.outer(self.scale, self.scale)


class CrossFitRidge(BaseEstimator):
    """Out-of-fold ridge probes for every feature, alpha chosen per feature and fold.

    Parameters
    ----------
    alphas: relative ridge strengths searched (``Ridge(alpha=a * n_train)`` on standardised X).
    feature_chunk: features per block of matrix products (memory only; results do not depend
        on it).
    chunk_size: rows per block when reading X.
    path: how the inner CV's error of every alpha is computed: ``"fractions"`` (default) one
        float64 ``d × d`` product per block and inner fit for the whole grid
        (:class:`~crosslayer.linalg.PenaltyPath`, equal to the direct sum to ~1e-13), or
        ``"dense"``, one product per alpha (the reference, and what ``"fractions"`` falls back
        to on a degenerate spectrum).
    path_dtype: ``"float64"`` (exact to round-off; the tests compare its alphas with
        scikit-learn's) or ``"float32"`` for the path's projections (with ``"dense"``, for
        its products too: then it can swap two alphas whose inner-CV errors differ by ~1e-6
        of the feature's variance). The chosen fits, their coefficients and the out-of-fold
        R² stay in float64 either way.
    active_threshold: when set, also the AUROC of each feature's pooled out-of-fold
        prediction against ``F > active_threshold`` (``auroc_``), made block by block in the
        fit (no ``[n, m]`` prediction matrix is held).

    Learned (``K`` folds, ``m`` features, ``d`` inputs): ``alpha_ [K, m]`` chosen per fold,
    ``cv_sse_ [K, n_alphas, m]`` the inner-CV squared error behind each choice, ``coef_ [K, d,
    m]`` and ``intercept_ [K, m]`` on X standardised by ``x_mean_ [K, d]``, ``x_scale_ [K,
    d]``; ``sse_ [m]`` pooled out-of-fold squared error, ``sst_ [m]`` squared deviation from
    the pooled mean, ``r2_ [m] = 1 - sse_/sst_`` (NaN for a constant feature); with
    ``active_threshold``, ``auroc_ [m]`` (NaN where a feature is always or never active).

    ``F`` may be a :class:`~crosslayer.crossfit.stats.FoldTargets` made for the same folds:
    its blocks are read once and serve several fits (one per layer, say).
    """

    def __init__(
        self,
        alphas: tuple[float, ...] = DEFAULT_ALPHAS,
        feature_chunk: int = 512,
        chunk_size: int = 8192,
        path: str = "fractions",
        path_dtype: str = "float64",
        active_threshold: float | None = None,
        device: str | None = None,
    ) -> None:
        self.alphas = alphas
        self.feature_chunk = feature_chunk
        self.chunk_size = chunk_size
        self.path = path
        self.path_dtype = path_dtype
        self.active_threshold = active_threshold
        self.device = device

    def fit(self, X: ArrayLike, F: ArrayLike | FoldTargets, fold_ids: ArrayLike) -> CrossFitRidge:
        """Fit every feature's probes; ``fold_ids [n]`` from :func:`grouped_folds`."""
        alphas = np.sort(np.asarray(self.alphas, dtype=np.float64))
        if (
            alphas.size < 1
            or (alphas < 0).any()
            or self.feature_chunk < 1
            or self.path not in ("fractions", "dense")
            or self.path_dtype not in ("float64", "float32")
        ):
            raise CrosslayerError(
                f"bad ridge settings alphas={self.alphas}, feature_chunk={self.feature_chunk}, "
                f"path={self.path!r}, path_dtype={self.path_dtype!r}",
                "use a non-empty grid of alphas >= 0, feature_chunk >= 1, path 'fractions' or "
                "'dense' and path_dtype 'float64' or 'float32'",
            )
        work = torch.float32 if self.path_dtype == "float32" else F64
        dev = resolve_device(self.device)
        n, d = check_2d("X", X)
        m = check_targets(F, n)
        folds, K = check_folds(fold_ids, n)
        if isinstance(F, FoldTargets):
            if not (np.array_equal(F.fold_ids, folds) and F.threshold == self.active_threshold):
                raise CrosslayerError(
                    "the prepared FoldTargets were made for other folds or another threshold",
                    "make FoldTargets(F, fold_ids, threshold=active_threshold) with this fit's "
                    "fold_ids and active_threshold",
                )
            lay = F.layout  # the blocks are in its order
        else:
            lay = FoldLayout.from_ids(folds, K)
        x = load_sorted(X, lay.order, dev, self.chunk_size)
        # Centre on the global mean first so that X'X in float32 keeps its precision (Gemma
        # activations have a few huge-mean dimensions); every fit re-centres exactly in
        # float64 from the sums, so this shift changes nothing else.
        self._shift = colsum(x) / n
        x -= self._shift.float()
        nk = np.diff(lay.bounds).astype(np.float64)
        sx = torch.stack([colsum(x[lay.rows(k)]) for k in range(K)])
        sxx = torch.stack([self._gram(x[lay.rows(k)]) for k in range(K)])

        def train(out: set[int]) -> _Train:
            f = [k for k in range(K) if k not in out]
            return _Train(f, nk[f].sum(), sx[f].sum(0), sxx[f].sum(0))

        outer = [train({k}) for k in range(K)]
        # each outer fit's test-fold scatter in its standardisation (every block's SSE uses it)
        test_g = [t.centred_val(nk[k], sx[k], sxx[k]) for k, t in enumerate(outer)]
        pairs = {(a, b): train({a, b}) for a in range(K) for b in range(a + 1, K)}
        # Validation scatter of fold i seen from inner set T_k \ {i}, in that set's eigenbasis
        # (float64 for the partial fractions, which amplify its round-off; else the path's dtype).
        inner: dict[tuple[int, int], tuple[_Train, torch.Tensor | PenaltyPath]] = {}
        mdt = F64 if self.path == "fractions" else work
        for k in range(K):
            for i in range(K):
                if i != k:
                    t = pairs[(min(k, i), max(k, i))]
                    g = t.centred_val(nk[i], sx[i], sxx[i])
                    V = t.V.to(mdt)
                    vgv = V.T @ g.to(mdt) @ V
                    inner[(k, i)] = (t, PenaltyPath(t.evals, vgv, alphas) if self.path ==
                                     "fractions" else vgv)  # fmt: skip
        A = len(alphas)
        self.alpha_ = np.empty((K, m))
        self.cv_sse_ = np.empty((K, A, m))
        self.coef_ = np.empty((K, d, m), dtype=np.float32)
        self.intercept_ = np.empty((K, m))
        self.sse_ = np.zeros(m)
        sum_f, sum_f2, raw_f2 = np.zeros(m), np.zeros(m), np.zeros(m)
        scoring = self.active_threshold is not None
        if scoring:
            self.auroc_ = np.full(m, np.nan)
            # each fold's rows in its outer set's standardisation, transposed: the
            # out-of-fold predictions of a block are one product per fold, [c, n_k]
            xs_t = [((x[lay.rows(k)] - t.mean.float()) / t.scale.float()).T for k, t in
                    enumerate(outer)]  # fmt: skip
        zbuf: torch.Tensor | None = None  # one prediction buffer for all blocks: a fresh
        # [c, n] each block would be fresh pages (tens of MB) to fault in every time
        for blk in self._blocks(F, lay, m, dev):
            j0, j1, f = blk.j0, blk.j1, blk.f
            raw_f2[j0:j1] = blk.raw_f2
            sy, syy = blk.sy, blk.syy
            if blk.sparse_t is not None:
                sxy = torch.stack([blk.cross(x, lay, sx[k], k) for k in range(K)])
            else:
                sxy = torch.stack([self._cross(x[lay.rows(k)], f[lay.rows(k)]) for k in range(K)])
            sum_f[j0:j1], sum_f2[j0:j1] = sy.sum(0).cpu().numpy(), syy.sum(0).cpu().numpy()
            cache = {key: self._project(t, sy, sxy, work) for key, t in pairs.items()}
            zt = None
            if scoring:
                if zbuf is None or len(zbuf) < j1 - j0:
                    zbuf = torch.empty(j1 - j0, n, dtype=torch.float32, device=dev)
                zt = zbuf[: j1 - j0]
            for k in range(K):
                path = torch.zeros(A, j1 - j0, dtype=F64, device=dev)
                for i in range(K):
                    if i == k:
                        continue
                    t, M = inner[(k, i)]
                    q, nu = cache[(min(k, i), max(k, i))]
                    path += self._sse_path(t, M, q, nu, nk[i], sx[i], sy[i], syy[i], sxy[i], alphas)
                best = path.argmin(0)  # first minimum: the smallest alpha among ties
                a_sel = torch.as_tensor(alphas, device=dev)[best]
                t = outer[k]
                q, nu = self._project(t, sy, sxy)
                coef = t.V @ (
                    q * inverse_or_zero(t.evals[:, None] + a_sel[None, :])
                )  # standardised X
                h, c = self._val_terms(t, nu, nk[k], sx[k], sy[k], syy[k], sxy[k])
                sse = sse_from_stats(coef, test_g[k], h, c).clamp(min=0.0)
                self.sse_[j0:j1] += sse.cpu().numpy()
                coef32 = coef.float()
                if zt is not None:  # the centred prediction: the same ranks as the raw one
                    zt[:, lay.rows(k)] = torch.addmm(nu.float()[:, None], coef32.T, xs_t[k])
                self.alpha_[k, j0:j1] = a_sel.cpu().numpy()
                self.cv_sse_[k, :, j0:j1] = path.cpu().numpy()
                self.coef_[k, :, j0:j1] = coef32.cpu().numpy()
                self.intercept_[k, j0:j1] = (nu + blk.shift).cpu().numpy()
            if zt is not None and blk.active is not None:
                self.auroc_[j0:j1] = auroc_rows(zt.cpu().numpy(), blk.active.cpu().numpy())
        self.x_mean_ = np.stack([(t.mean + self._shift).cpu().numpy() for t in outer])
        self.x_scale_ = np.stack([t.scale.cpu().numpy() for t in outer])
        self.sst_ = sum_f2 - sum_f**2 / n
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = 1.0 - self.sse_ / self.sst_
        self.r2_ = np.where(self.sst_ > 1e-12 * np.maximum(raw_f2, 1e-300), r2, np.nan)
        self.fold_ids_, self.alphas_ = folds, alphas
        self.n_features_in_ = d
        return self

    def predict_oof(self, X: ArrayLike) -> np.ndarray:
        """Out-of-fold predictions ``[n, m]``: each row by the probe of its own fold."""
        if not hasattr(self, "coef_"):
            raise CrosslayerError("this CrossFitRidge is not fitted", "call fit(X, F, folds)")
        n, d = check_2d("X", X)
        if n != len(self.fold_ids_) or d != self.n_features_in_:
            raise CrosslayerError(
                f"X is {n}x{d}, the probes were fitted on {len(self.fold_ids_)}x"
                f"{self.n_features_in_}",
                "pass the same X that was fitted (out-of-fold predictions are per row)",
            )
        out = np.empty((n, self.coef_.shape[2]), dtype=np.float32)
        x = np.asarray(X, dtype=np.float32)
        for k in range(len(self.alpha_)):
            rows = np.nonzero(self.fold_ids_ == k)[0]
            xs = (x[rows] - self.x_mean_[k]) / self.x_scale_[k]
            out[rows] = xs.astype(np.float32) @ self.coef_[k] + self.intercept_[k]
        return out

    def score(self, X: ArrayLike | None = None, F: ArrayLike | None = None) -> float:
        """Mean out-of-fold R² over the features where it is defined (from the fit)."""
        return float(np.nanmean(self.r2_))

    def _blocks(
        self, F: ArrayLike | FoldTargets, lay: FoldLayout, m: int, dev: torch.device
    ) -> Iterator[TargetBlock]:
        """F's blocks of columns in fold order: prepared ones, or read a chunk at a time."""
        if isinstance(F, FoldTargets):
            yield from F.blocks
            return
        for j0 in range(0, m, self.feature_chunk):
            j1 = min(j0 + self.feature_chunk, m)
            yield TargetBlock.read(F, lay, j0, j1, dev, self.active_threshold)

    # Products in float32 (X is centred), summed in float64 by row chunks.
    def _gram(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[1], x.shape[1], dtype=F64, device=x.device)
        for r in row_chunks(len(x), self.chunk_size):
            out += (x[r].T @ x[r]).double()
        return out

    def _cross(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(x.shape[1], f.shape[1], dtype=F64, device=x.device)
        for r in row_chunks(len(x), self.chunk_size):
            out += (x[r].T @ f[r]).double()
        return out

    @staticmethod
    def _project(
        t: _Train, sy: torch.Tensor, sxy: torch.Tensor, dtype: torch.dtype = F64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q = Vᵀ Cxf`` (standardised, centred; the product in ``dtype``) and the targets'
        means on training set t."""
        nu = sy[t.folds].sum(0) / t.n
        h = sxy[t.folds].sum(0) - t.n * torch.outer(t.mean, nu)
        return t.V.to(dtype).T @ (h / t.scale[:, None] / t.n).to(dtype), nu

    @staticmethod
    def _val_terms(
        t: _Train,
        nu: torch.Tensor,
        n: float,
        sx: torch.Tensor,
        sy: torch.Tensor,
        syy: torch.Tensor,
        sxy: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation ``H = Σ xs (f - ν)`` (standardised by t) and ``c = Σ (f - ν)²``."""
        mu = t.mean
        h = sxy - torch.outer(sx, nu) - torch.outer(mu, sy) + n * torch.outer(mu, nu)
        return h / t.scale[:, None], syy - 2 * nu * sy + n * nu**2

    def _sse_path(
        self,
        t: _Train,
        M: torch.Tensor | PenaltyPath,
        q: torch.Tensor,
        nu: torch.Tensor,
        n: float,
        sx: torch.Tensor,
        sy: torch.Tensor,
        syy: torch.Tensor,
        sxy: torch.Tensor,
        alphas: np.ndarray,
    ) -> torch.Tensor:
        """Validation SSE ``[n_alphas, c]`` of the fits on t for every alpha and feature."""
        h, c = self._val_terms(t, nu, n, sx, sy, syy, sxy)
        if isinstance(M, PenaltyPath):
            return M.sse(q, t.V.to(q.dtype).T @ h.to(q.dtype), c)
        return sse_path_per_target(t.V, t.evals, M, q, h, c, alphas)
