"""Ridge predictors of a whole layer, one alpha per layer and fold by grouped inner CV.

The fit of outer fold ``k`` uses only the other folds ``T_k``: its alpha minimises the summed
squared error (all dimensions: the variance-weighted objective of the layer's EV) of the
leave-one-fold-out fits inside ``T_k``, on X standardised with each training set's own mean
and std; ``alpha`` is relative, as in :class:`crosslayer.crossfit.CrossFitRidge`
(``Ridge(alpha=alpha * n_train)`` on standardised X). Everything comes from per-fold sums
(Σx, X'X, Σy, Σy², X'Y): each training set is eigendecomposed once per design and serves
every alpha and every layer; a validation fold's error for every alpha follows from its
sums alone, ``c - 2 Σ_a D_a A_a + Dᵀ (M ∘ QQᵀ) D`` with ``D = 1/(λ + α)``.
One alpha per layer, not per dimension: the per-alpha cost is then ``O(d²)`` instead of
``O(d² m)``, which is what keeps the wide ``context_k`` designs affordable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crosslayer.crossfit.stats import F64, standardisation
from crosslayer.linalg.ridge import eigh_psd


@dataclass
class FoldSums:
    """Per-fold sums of one design: ``n [K]``, ``sx [K, w]``, ``sxx [K, w, w]`` (float64)."""

    n: np.ndarray
    sx: torch.Tensor
    sxx: torch.Tensor

    def width(self, w: int) -> FoldSums:
        """The sums of the design's first ``w`` columns (a nested design)."""
        return FoldSums(self.n, self.sx[:, :w], self.sxx[:, :w, :w])


@dataclass
class TargetSums:
    """Per-fold sums of one layer: ``sy, syy [K, m]`` and ``sxy [K, w, m]`` (float64)."""

    sy: torch.Tensor
    syy: torch.Tensor
    sxy: torch.Tensor

    def width(self, w: int) -> TargetSums:
        return TargetSums(self.sy, self.syy, self.sxy[:, :w])


class _Set:
    """One training set (a union of folds): standardisation and eigendecomposition."""

    def __init__(self, folds: list[int], x: FoldSums) -> None:
        self.folds = folds
        self.n = float(x.n[folds].sum())
        sx, sxx = x.sx[folds].sum(0), x.sxx[folds].sum(0)
        self.mean, self.scale = standardisation(self.n, sx, sxx.diagonal())
        g = (sxx - self.n * torch.outer(self.mean, self.mean)) / torch.outer(self.scale, self.scale)
        self.evals, self.V = eigh_psd(g / self.n)

    def val_scatter(self, n: float, sx: torch.Tensor, sxx: torch.Tensor) -> torch.Tensor:
        """``Vᵀ G V``: a validation fold's scatter, standardised by this set, in its eigenbasis."""
        mu = self.mean
        g = sxx - torch.outer(sx, mu) - torch.outer(mu, sx) + n * torch.outer(mu, mu)
        g = g / torch.outer(self.scale, self.scale)
        return self.V.T @ g @ self.V

    def project(self, y: TargetSums) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q = Vᵀ Cxy`` (standardised, centred) and the targets' means on this set."""
        nu = y.sy[self.folds].sum(0) / self.n
        h = y.sxy[self.folds].sum(0) - self.n * torch.outer(self.mean, nu)
        return self.V.T @ (h / self.scale[:, None] / self.n), nu


@dataclass
class RidgeFit:
    """Outer fits of one design and layer: ``ŷ = x W[k] + b[k]`` for rows of fold ``k``."""

    W: list[np.ndarray]  # K x [w, m] float32, on the design's centred columns
    b: list[np.ndarray]  # K x [m]
    alpha: np.ndarray  # [K] chosen relative alpha
    cv_sse: np.ndarray  # [K, n_alphas] inner-CV squared error behind each choice


class NestedRidge:
    """The X side of one design for ``K`` folds: every training set decomposed once."""

    def __init__(self, x: FoldSums, alphas: np.ndarray) -> None:
        self.x, self.alphas = x, np.sort(np.asarray(alphas, dtype=np.float64))
        K = len(x.n)
        self.K = K
        self.outer = [_Set([f for f in range(K) if f != k], x) for k in range(K)]
        self.pairs = {
            (a, b): _Set([f for f in range(K) if f not in (a, b)], x)
            for a in range(K)
            for b in range(a + 1, K)
        }
        # M[(k, i)]: fold i's scatter seen from the inner set T_k \ {i}
        self.M = {
            (k, i): self.pairs[(min(k, i), max(k, i))].val_scatter(float(x.n[i]), x.sx[i], x.sxx[i])
            for k in range(K)
            for i in range(K)
            if i != k
        }

    def fit(self, y: TargetSums) -> RidgeFit:
        """Choose alpha per outer fold by inner CV and fit every outer fold."""
        K, alphas = self.K, torch.as_tensor(self.alphas, dtype=F64)
        proj = {key: t.project(y) for key, t in self.pairs.items()}
        qq = {key: q @ q.T for key, (q, _) in proj.items()}
        W, b, chosen = [], [], np.empty(K)
        cv = np.zeros((K, len(alphas)))
        for k in range(K):
            path = torch.zeros(len(alphas), dtype=F64)
            for i in range(K):
                if i == k:
                    continue
                key = (min(k, i), max(k, i))
                t, (q, nu) = self.pairs[key], proj[key]
                path += self._sse_path(t, self.M[(k, i)], q, qq[key], nu, i, y, alphas)
            best = int(path.argmin())  # the smallest alpha among ties
            chosen[k], cv[k] = float(alphas[best]), path.numpy()
            t = self.outer[k]
            q, nu = t.project(y)
            beta = t.V @ (q / (t.evals[:, None] + alphas[best]))
            w = beta / t.scale[:, None]
            W.append(w.float().numpy())
            b.append((nu - t.mean @ w).numpy())
        return RidgeFit(W, b, chosen, cv)

    def _sse_path(
        self,
        t: _Set,
        M: torch.Tensor,
        q: torch.Tensor,
        qq: torch.Tensor,
        nu: torch.Tensor,
        i: int,
        y: TargetSums,
        alphas: torch.Tensor,
    ) -> torch.Tensor:
        """Σ over dimensions of fold i's squared error, for every alpha (sums only)."""
        n, sx, mu = float(self.x.n[i]), self.x.sx[i], t.mean
        h = y.sxy[i] - torch.outer(sx, nu) - torch.outer(mu, y.sy[i]) + n * torch.outer(mu, nu)
        h = h / t.scale[:, None]
        c = (y.syy[i] - 2 * nu * y.sy[i] + n * nu**2).sum()
        a = (q * (t.V.T @ h)).sum(1)  # [w]
        mq = M * qq
        D = 1.0 / (t.evals[None, :] + alphas[:, None])  # [A, w]
        return c - 2 * D @ a + ((D @ mq) * D).sum(1)
