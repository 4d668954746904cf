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

Everything is a per-fold, per-token sum, so the grid of ``λ`` and the nested CV cost
``O(K² · n_λ · G)`` per feature after one pass over the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crosslayer.crossfit.folds import check_folds
from crosslayer.crossfit.stats import F64, check_targets
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike, as_tensor

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
    feature_chunk: int = 256,
) -> TokenLookupResult:
    """Cross-fitted token-lookup R² of every column of ``F [n, m]`` (see the module doc)."""
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
    perms = [rng.permutation(ids) for _ in range(n_permutations)]
    r2 = np.full(m, np.nan)
    strength = np.full((K, m), np.nan)
    null = np.full((n_permutations, m), np.nan)
    fold_t = torch.as_tensor(folds)
    for j0 in range(0, m, feature_chunk):
        j1 = min(j0 + feature_chunk, m)
        f = as_tensor(np.asarray(F[:, j0:j1]), torch.device("cpu"), F64)
        r2[j0:j1], strength[:, j0:j1] = _crossfit(torch.as_tensor(ids), fold_t, K, f, grid)
        for p, perm in enumerate(perms):
            null[p, j0:j1] = _crossfit(torch.as_tensor(perm), fold_t, K, f, grid)[0]
    level = null.max(0) if n_permutations else np.full(m, np.nan)
    return TokenLookupResult(r2, strength, null, level)


def _crossfit(
    ids: torch.Tensor, folds: torch.Tensor, K: int, f: torch.Tensor, grid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """R² ``[c]`` and chosen strengths ``[K, c]`` of the lookup on ids for features ``f``."""
    G, c = int(ids.max()) + 1, f.shape[1]
    S = torch.zeros(K, G, c, dtype=F64)
    N = torch.zeros(K, G, dtype=F64)
    for k in range(K):
        rows = folds == k
        S[k].index_add_(0, ids[rows], f[rows])
        N[k].index_add_(0, ids[rows], torch.ones(int(rows.sum()), dtype=F64))
    sq = torch.stack([f[folds == k].square().sum(0) for k in range(K)])  # [K, c]
    s_tot, n_tot = S.sum(0), N.sum(0)
    lam_grid = torch.as_tensor(grid, dtype=F64)
    SN = [S[k].sum(0) for k in range(K)]  # Σ f over fold k, [c]

    def train(out: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The lookup fitted on all folds but ``out``: token counts, ``μ`` and ``d_t`` (the
        token's mean minus μ; 0 for an unseen token)."""
        s, cnt = s_tot.clone(), n_tot.clone()
        for o in out:
            s -= S[o]
            cnt -= N[o]
        mu = s.sum(0) / cnt.sum()
        d = torch.where(cnt[:, None] > 0, s / cnt.clamp(min=1)[:, None] - mu, 0.0)
        return cnt, mu, d

    def sse_path(
        k: int,
        fit: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        lam: torch.Tensor,
        per_feature: bool,
    ) -> torch.Tensor:
        """Σ_{i in fold k} (f_i - f̂_i)² for the lookup ``fit``.

        With ``w_t = N_t / (N_t + λ)`` (0 for an unseen token or λ = ∞) the prediction is
        ``μ + w_t d_t``, so the error is ``Σ (f - μ)² - 2 Σ_t w_t d_t (S_kt - N_kt μ) + Σ_t
        w_t² N_kt d_t²``: for a grid of λ (``lam [A]``, the same w for every feature) matrix
        products; for one λ per feature (``per_feature``, ``lam [c]``) one elementwise pass.
        """
        cnt, mu, d = fit
        c0 = sq[k] - 2 * mu * SN[k] + N[k].sum() * mu.square()
        if per_feature:
            w = _weight(cnt[:, None], lam[None, :])  # [G, c]
            b = d * (S[k] - N[k][:, None] * mu)
            return c0 - 2 * (w * b).sum(0) + (w.square() * N[k][:, None] * d.square()).sum(0)
        w = _weight(cnt[None, :], lam[:, None])  # [A, G]
        wn = w * N[k][None, :]
        # Σ_t w_t d_t (S_kt - N_kt μ) = w (d∘S_k) - μ (w∘N_k) d, and Σ_t w_t² N_kt d_t²
        return c0[None, :] - 2 * (w @ (d * S[k]) - mu[None, :] * (wn @ d)) + (w * wn) @ d.square()

    sse_out = torch.zeros(c, dtype=F64)
    chosen = np.empty((K, c))
    # Leave-one-training-fold-out paths: the set fitted without {a, b} is inner set b of
    # outer fold a and inner set a of outer fold b, so each is built once, one at a time.
    paths = torch.zeros(K, len(grid), c, dtype=F64)
    for a in range(K):
        for b in range(a + 1, K):
            fit = train((a, b))
            paths[a] += sse_path(b, fit, lam_grid, per_feature=False)
            paths[b] += sse_path(a, fit, lam_grid, per_feature=False)
    for k in range(K):
        best = paths[k].argmin(0)  # first minimum: the least shrinkage among ties
        lam_sel = lam_grid[best]
        sse_out += sse_path(k, train((k,)), lam_sel, per_feature=True).clamp(min=0.0)
        chosen[k] = lam_sel.numpy()
    total_sq = sq.sum(0)
    sst = total_sq - s_tot.sum(0) ** 2 / n_tot.sum()
    r2 = 1.0 - sse_out / sst
    r2 = torch.where(sst > 1e-12 * total_sq.clamp(min=1e-300), r2, torch.nan)
    return r2.numpy(), chosen


def _weight(cnt: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``N / (N + λ)``: the share of a token's own mean; 0 if unseen or λ = ∞."""
    w = cnt / (cnt + lam).clamp(min=1e-300)
    return torch.where(torch.isinf(lam) | (cnt == 0), torch.zeros_like(w), w)
