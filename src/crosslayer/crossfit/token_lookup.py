"""Cross-fitted token-lookup R²: how much of a feature the current token's identity predicts.

In-sample eta squared (``crosslayer.compare.token_determinedness``) fits one mean per token on
the tokens it scores, so a feature independent of the token still gets about ``(G-1)/(N-1)``
(G distinct tokens, N tokens). Here the lookup table is fitted on the other folds:

``f̂_i = (S_t + λ μ) / (N_t + λ)``, ``t`` = token of ``i``,

with ``S_t``, ``N_t`` the feature's sum and the count of token ``t`` in the training folds,
``μ`` their mean: each token's mean shrunk toward the feature's mean with a pseudo-count
``λ`` (empirical Bayes: a token seen ``N_t`` times keeps ``N_t / (N_t + λ)`` of its own mean;
an unseen token predicts ``μ``). ``λ`` is chosen per feature and outer fold by leave-one-
training-fold-out CV, as the ridge alpha is. R² pools the folds' squared errors around the
pooled mean, so a feature independent of its token scores about 0 (slightly below: the lookup
is fitted to noise). The null level is the same statistic after shuffling the token ids over
the tokens (``n_permutations`` times): what token lookup scores on a feature it cannot predict.

Everything is a per-fold, per-token sum, kept sparse: a sparse feature is active on few
tokens, so ``S_kt`` (its sum over token ``t`` in fold ``k``) and the training sets' token
means are sparse ``[G, m]`` matrices, and every squared error of the nested CV, for every
``λ`` of the grid, is a product of a dense ``[n_λ, G]`` weight matrix with one of them
(:func:`_sse_paths`): ``O(K² · n_λ · nnz)`` after one pass over the tokens, for all
features at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from crosslayer.crossfit.folds import check_folds
from crosslayer.crossfit.stats import check_targets
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike

DEFAULT_STRENGTHS: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, np.inf)


@dataclass
class TokenLookupResult:
    """Per feature: out-of-fold token-lookup R² and its permutation null."""

    r2: np.ndarray  # [m] 1 - Σ_k SSE_k / Σ_i (f_i - f̄)²; NaN for a constant feature
    strength: np.ndarray  # [K, m] chosen pseudo-count λ per outer fold (inf: the mean)
    null_r2: np.ndarray  # [n_permutations, m] the same R² with shuffled token ids
    null_level: np.ndarray  # [m] max of null_r2 over permutations (NaN without any)


def token_lookup_r2(
    token_ids: ArrayLike,
    F: ArrayLike,
    fold_ids: ArrayLike,
    *,
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS,
    n_permutations: int = 5,
    seed: int = 0,
    feature_chunk: int = 4096,
) -> TokenLookupResult:
    """Cross-fitted token-lookup R² of every column of ``F [n, m]`` (see the module doc).

    ``F``: a dense array, a scipy sparse matrix, or a wrapper of one with a ``csc`` attribute
    (read without densifying); ``feature_chunk`` columns are fitted at a time (memory only).
    """
    tok = np.asarray(token_ids).reshape(-1)
    n = tok.size
    m = check_targets(F, n)
    folds, K = check_folds(fold_ids, n)
    grid = np.sort(np.asarray(strengths, dtype=np.float64))
    if grid.size < 1 or (grid < 0).any() or n_permutations < 0 or feature_chunk < 1:
        raise CrosslayerError(
            f"bad token-lookup settings strengths={strengths}, n_permutations={n_permutations}",
            "use strengths >= 0 (inf allowed), n_permutations >= 0, feature_chunk >= 1",
        )
    _, ids = np.unique(tok, return_inverse=True)
    rng = np.random.default_rng(seed)
    groupings = [_Grouping(g, folds, K) for g in [ids, *(rng.permutation(ids) for _ in
                                                        range(n_permutations))]]  # fmt: skip
    r2 = np.full(m, np.nan)
    strength = np.full((K, m), np.nan)
    null = np.full((n_permutations, m), np.nan)
    for j0 in range(0, m, feature_chunk):
        j1 = min(j0 + feature_chunk, m)
        f = _sparse_columns(F, j0, j1)
        r2[j0:j1], strength[:, j0:j1] = _crossfit(groupings[0], f, grid)
        for p, g in enumerate(groupings[1:]):
            null[p, j0:j1] = _crossfit(g, f, grid)[0]
    level = null.max(0) if n_permutations else np.full(m, np.nan)
    return TokenLookupResult(r2, strength, null, level)


def _sparse_columns(F: ArrayLike, j0: int, j1: int) -> sp.csc_matrix:
    """Columns ``j0:j1`` of F as a float64 CSC matrix (finite, checked once here)."""
    src = F if sp.issparse(F) else getattr(F, "csc", None)
    if src is not None:
        out = sp.csc_matrix(src[:, j0:j1], dtype=np.float64)
    else:
        block = F[:, j0:j1]
        dense = block.cpu().numpy() if isinstance(block, torch.Tensor) else np.asarray(block)
        out = sp.csc_matrix(dense)  # sparse first: only the non-zeros become float64
        out.data = out.data.astype(np.float64)
    if not np.isfinite(out.data).all():
        raise CrosslayerError(
            "the data contain NaN or infinite values",
            "remove or re-collect the non-finite activations before fitting",
        )
    return out


class _Grouping:
    """Group ids (tokens, or shuffled tokens) and folds: per fold, the sparse ``[n, G]``
    indicator whose product sums a fold's rows by group, and the fold's count per group."""

    def __init__(self, ids: np.ndarray, folds: np.ndarray, K: int) -> None:
        self.K, self.G, n = K, int(ids.max()) + 1, len(ids)
        self.by = []
        self.count = np.zeros((K, self.G))
        for k in range(K):
            rows = np.flatnonzero(folds == k)
            self.by.append(
                sp.csr_matrix((np.ones(rows.size), (rows, ids[rows])), shape=(n, self.G))
            )
            self.count[k] = np.bincount(ids[rows], minlength=self.G)
        self.in_fold = np.stack([folds == k for k in range(K)]).astype(np.float64)  # [K, n]


def _crossfit(grp: _Grouping, f: sp.csc_matrix, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R² ``[c]`` and chosen strengths ``[K, c]`` of the lookup by ``grp`` for features ``f``.

    The sparse matrices are features x groups (CSR), so that every product with the dense
    ``[A, G]`` weights is one pass over their non-zeros."""
    K, c = grp.K, f.shape[1]
    ft = f.T.tocsr()  # [c, n]
    S = [ft @ by for by in grp.by]  # Σ f over each group's rows of fold k, [c, G] per fold
    sq = np.asarray(ft.multiply(ft) @ grp.in_fold.T).T  # [K, c] Σ f² per fold
    SN = np.asarray(ft @ grp.in_fold.T).T  # [K, c] Σ f per fold

    def train(out: tuple[int, ...]) -> _Fit:
        """The lookup fitted on all folds but ``out``, from the training folds' own sums
        (a sum of the kept folds, not all minus the others: unseen tokens stay exactly 0)."""
        keep = [k for k in range(K) if k not in out]
        s = S[keep[0]]
        for k in keep[1:]:
            s = s + S[k]
        cnt = grp.count[keep].sum(0)
        mu = SN[keep].sum(0) / cnt.sum()
        inv = np.divide(1.0, cnt, out=np.zeros_like(cnt), where=cnt > 0)
        e = sp.csr_matrix(s @ sp.diags(inv))  # the training token means, [c, G]
        return _Fit(cnt, mu, e, e.multiply(e).tocsr())

    def sse_paths(k: int, fit: _Fit) -> np.ndarray:
        """Σ_{i in fold k} (f_i - f̂_i)² ``[A, c]`` of the lookup ``fit`` for every λ.

        With ``w_t = N_t / (N_t + λ)`` (0 for an unseen token or λ = ∞), ``e_t`` the training
        mean of token t (0 if unseen) and ``d_t = e_t - μ``, the prediction is ``μ + w_t d_t``
        and the error ``c0 - 2 Σ_t w_t d_t (S_kt - N_kt μ) + Σ_t w_t² N_kt d_t²``, expanded in
        ``e`` so that each sum over t is a sparse matrix times the weights (the same for
        every feature): ``Σ w d (S - Nμ) = (e∘S)w - μ Sw - μ e(w∘N) + μ² Σ w∘N`` and
        ``Σ w²N d² = e²(w²∘N) - 2μ e(w²∘N) + μ² Σ w²∘N``.
        """
        A = len(grid)
        w = _weight(fit.cnt[None, :], grid[:, None])  # [A, G]
        wn, w2n = w * grp.count[k], w * w * grp.count[k]
        ws = np.asarray(S[k] @ w.T).T  # [A, c]
        wes = np.asarray(sp.csr_matrix(fit.e.multiply(S[k])) @ w.T).T
        we = np.asarray(fit.e @ np.concatenate([wn, w2n]).T).T  # [(w∘N)e; (w²∘N)e]
        w2e2 = np.asarray(fit.e2 @ w2n.T).T
        mu = fit.mu[None, :]
        lin = wes - mu * ws - mu * we[:A] + mu**2 * wn.sum(1)[:, None]
        quad = w2e2 - 2 * mu * we[A:] + mu**2 * w2n.sum(1)[:, None]
        c0 = sq[k] - 2 * fit.mu * SN[k] + grp.count[k].sum() * fit.mu**2
        return c0[None, :] - 2 * lin + quad

    sse_out = np.zeros(c)
    chosen = np.empty((K, c))
    # Leave-one-training-fold-out paths: the set fitted without {a, b} is inner set b of
    # outer fold a and inner set a of outer fold b, so each is built once, one at a time.
    # With K = 2 an inner training set is empty: no inner CV is possible, and every path
    # stays 0, so the first (least) shrinkage is chosen.
    paths = np.zeros((K, len(grid), c))
    for a in range(K):
        for b in range(a + 1, K):
            if K < 3:
                continue
            fit = train((a, b))
            paths[a] += sse_paths(b, fit)
            paths[b] += sse_paths(a, fit)
    cols = np.arange(c)
    for k in range(K):
        best = paths[k].argmin(0)  # first minimum: the least shrinkage among ties
        sse_out += np.maximum(sse_paths(k, train((k,)))[best, cols], 0.0)
        chosen[k] = grid[best]
    total_sq = sq.sum(0)
    sst = total_sq - SN.sum(0) ** 2 / grp.count.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - sse_out / sst
    return np.where(sst > 1e-12 * np.maximum(total_sq, 1e-300), r2, np.nan), chosen


@dataclass
class _Fit:
    """A lookup fitted on a training set: token counts, feature means, token means (sparse)."""

    cnt: np.ndarray  # [G]
    mu: np.ndarray  # [c]
    e: sp.csr_matrix  # [c, G], 0 for an unseen token
    e2: sp.csr_matrix  # e ∘ e


def _weight(cnt: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """``N / (N + λ)``: the share of a token's own mean; 0 if unseen or λ = ∞."""
    with np.errstate(divide="ignore", invalid="ignore"):
        w = cnt / (cnt + lam)
    return np.where(np.isinf(lam) | (cnt == 0), 0.0, w)
