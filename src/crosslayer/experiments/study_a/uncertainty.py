"""Dictionary claims with the right unit: the seed (a training run) and the document.

"The residual SAE's features are less token-determined than the baseline's" is a claim about
two *dictionaries*, not about 2,000 independent features: the features of one SAE share its
training run, and they are all scored on the same few documents. So the headline difference
``Δ = mean over seeds of S(a) - mean over seeds of S(b)``, ``S`` = the mean out-of-fold score
over a dictionary's scorable features, gets two intervals:

* **seed level**: a paired t-interval over seeds, ``d_s = S_s(a) - S_s(b)`` (seed ``s``
  trains both dictionaries with the same initialisation and batch order), ``t_{S-1}``
  quantiles; with one seed it is "not estimable";
* **document level**: a percentile bootstrap over documents (``n_boot`` resamples, seeded).
  The out-of-fold predictions and the full-sample mean that ``SST`` is centred on are fixed
  and the documents they score are resampled: each feature's R² is recomputed from
  per-document sums (:class:`DocStats`, the estimate's functional), the same resample
  for every dictionary and seed (they are scored on the same tokens), so it is paired.

p-values are printed at the resolution that backs them (:func:`format_p`): a bootstrap
p-value below ``1/n_boot`` is "< 1/n_boot", and a t-test on 3 seeds is not quoted below 1e-3.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from crosslayer.crossfit import token_lookup_r2
from crosslayer.crossfit.folds import check_folds
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import sst_about_pooled_mean

P_FLOOR = 1e-3
"""The smallest p-value quoted for a parametric test on a handful of seeds."""


@dataclass
class DocStats:
    """Per-document sums behind each feature's pooled out-of-fold R².

    For documents ``D`` and features ``m``: tokens ``n [D]``, ``sum_y``, ``sum_y2`` and the
    out-of-fold squared error ``sse`` ``[D, m]``. ``R² = 1 - Σ_d w_d sse_d / Σ_d w_d sst_d``
    for document weights ``w`` (1: the estimate; counts: a bootstrap resample), with
    ``sst_d = Σ_{i∈d} (y_i - ȳ)²`` about the *full-sample* mean ȳ. The centre stays fixed
    like the out-of-fold predictions: re-centring on a resample's own mean would shrink its
    ``sst`` by that mean's spread while ``sse`` does not shrink, biasing every resample's R²
    below the estimate (a percentile CI could then exclude its own estimate).
    """

    n: np.ndarray
    sum_y: np.ndarray
    sum_y2: np.ndarray
    sse: np.ndarray

    @property
    def n_features(self) -> int:
        return int(self.sse.shape[1])

    def r2(self, weights: np.ndarray | None = None) -> np.ndarray:
        """R² per feature ``[m]``, or ``[B, m]`` for document weights ``[B, D]`` (counts)."""
        w = np.ones((1, len(self.n))) if weights is None else np.atleast_2d(weights)
        sst_doc = sst_about_pooled_mean(self.n, self.sum_y, self.sum_y2)
        sy2, sse, sst = w @ self.sum_y2, w @ self.sse, w @ sst_doc
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(sst > 1e-12 * np.maximum(sy2, 1e-300), 1.0 - sse / sst, np.nan)
        return r2[0] if weights is None else r2

    def subset(self, features: np.ndarray) -> DocStats:
        return DocStats(
            self.n, self.sum_y[:, features], self.sum_y2[:, features], self.sse[:, features]
        )


def doc_stats(F: np.ndarray, F_hat: np.ndarray, doc_index: np.ndarray, n_docs: int) -> DocStats:
    """:class:`DocStats` of targets ``F [n, m]`` and out-of-fold predictions ``F_hat``;
    ``doc_index [n]`` in ``0 … n_docs-1``."""
    f = torch.as_tensor(np.asarray(F, dtype=np.float64))
    err = (f - torch.as_tensor(np.asarray(F_hat, dtype=np.float64))).square()
    idx = torch.as_tensor(np.asarray(doc_index, dtype=np.int64))

    def per_doc(v: torch.Tensor) -> np.ndarray:
        return torch.zeros(n_docs, v.shape[1], dtype=v.dtype).index_add_(0, idx, v).numpy()

    n = np.bincount(doc_index, minlength=n_docs).astype(np.float64)
    return DocStats(n, per_doc(f), per_doc(f.square()), per_doc(err))


def token_lookup_oof(
    token_ids: np.ndarray, F: np.ndarray, fold_ids: np.ndarray, strength: np.ndarray
) -> np.ndarray:
    """Out-of-fold token-lookup predictions ``[n, m]`` with the pseudo-counts ``strength [K,
    m]`` that :func:`crosslayer.crossfit.token_lookup_r2` chose (its module docstring):
    ``(S_t + λ μ) / (N_t + λ)`` from the other folds; ``μ`` for an unseen token or λ = ∞."""
    folds, K = check_folds(fold_ids, len(token_ids))
    _, inverse = np.unique(np.asarray(token_ids).reshape(-1), return_inverse=True)
    ids = torch.as_tensor(inverse)
    G = int(ids.max()) + 1
    f = torch.as_tensor(np.asarray(F, dtype=np.float64))
    fold_t = torch.as_tensor(folds)
    out = torch.empty_like(f)
    for k in range(K):
        train, test = fold_t != k, fold_t == k
        S = torch.zeros(G, f.shape[1], dtype=f.dtype).index_add_(0, ids[train], f[train])
        N = torch.bincount(ids[train], minlength=G).to(f.dtype)
        mu = S.sum(0) / N.sum()
        lam = torch.as_tensor(np.asarray(strength[k], dtype=np.float64))[None, :]
        cnt = N[ids[test]][:, None]
        # w = N / (N + λ): the share of the token's own mean (0 when unseen or λ = ∞)
        w = torch.where(torch.isinf(lam) | (cnt == 0), 0.0, cnt / (cnt + lam).clamp(min=1e-300))
        own = S[ids[test]] / cnt.clamp(min=1)
        out[test] = mu + w * (own - mu)
    return out.numpy()


def token_lookup_doc_stats(
    token_ids: np.ndarray,
    F: np.ndarray,
    fold_ids: np.ndarray,
    doc_index: np.ndarray,
    n_docs: int,
    *,
    feature_chunk: int = 256,
) -> DocStats:
    """Cross-fitted token-lookup (shrinkage chosen by :func:`~crosslayer.crossfit.
    token_lookup_r2`) as :class:`DocStats`; its ``r2()`` equals that function's ``r2``."""
    F = np.asarray(F)
    parts = []
    for j0 in range(0, F.shape[1], feature_chunk):
        f = np.asarray(F[:, j0 : j0 + feature_chunk], dtype=np.float64)
        res = token_lookup_r2(token_ids, f, fold_ids, n_permutations=0)
        parts.append(doc_stats(f, token_lookup_oof(token_ids, f, fold_ids, res.strength),
                               doc_index, n_docs))  # fmt: skip
    return concat_features(parts)


def concat_features(parts: Sequence[DocStats]) -> DocStats:
    """Column-wise concatenation of :class:`DocStats` over the same documents."""
    if not parts:
        raise CrosslayerError("no features to score", "pass at least one scorable feature")
    return DocStats(
        parts[0].n,
        np.concatenate([p.sum_y for p in parts], axis=1),
        np.concatenate([p.sum_y2 for p in parts], axis=1),
        np.concatenate([p.sse for p in parts], axis=1),
    )


def format_p(p: float, resolution: float = P_FLOOR) -> str:
    """A p-value at the precision that backs it: "< 0.001" below ``resolution``, else 2
    significant digits."""
    if not np.isfinite(p):
        return "not estimable"
    if p < resolution:
        return f"< {resolution:.2g}"
    return f"{p:.2g}"


def bootstrap_weights(n_docs: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n_docs]`` multiplicities of a document bootstrap (multinomial, seeded)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_docs, np.full(n_docs, 1.0 / n_docs), size=n_boot).astype(np.float64)


def dictionary_score(stats: DocStats, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean R² over the features in ``stats`` (scorable ones), per resample if weighted."""
    r2 = stats.r2(weights)
    with np.errstate(all="ignore"):
        return np.asarray(np.nanmean(r2, axis=-1))


def seed_interval(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Paired t-interval and two-sided p over seeds of ``a_s - b_s`` (module docstring)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size < 2:
        return {"n_seeds": int(d.size), "ci95": None, "p": None, "p_text": "not estimable",
                "note": "one seed: the seed-to-seed spread is not estimable"}  # fmt: skip
    se = d.std(ddof=1) / np.sqrt(d.size)
    half = float(stats.t.ppf(0.975, d.size - 1) * se)
    if se > 0:
        p = float(2 * stats.t.sf(abs(d.mean()) / se, d.size - 1))
    else:
        p = 0.0 if d.mean() != 0 else 1.0
    return {
        "n_seeds": int(d.size),
        "ci95": [float(d.mean() - half), float(d.mean() + half)],
        "sd": float(d.std(ddof=1)),
        "p": max(p, P_FLOOR),
        "p_text": format_p(p),
    }


def compare_dictionaries(
    a: Sequence[DocStats], b: Sequence[DocStats], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """``Δ = mean_s S_s(a) - mean_s S_s(b)`` with a seed-level and a document-bootstrap 95% CI.

    ``a[s]``, ``b[s]``: per-document sums of the scorable features of seed ``s`` of each
    dictionary (all on the same documents). See the module docstring for both intervals.
    """
    if len(a) != len(b) or not a:
        raise CrosslayerError(
            f"{len(a)} and {len(b)} seeds: the two dictionaries need the same seeds",
            "train both with the same sae_training.seeds",
        )
    n_docs = len(a[0].n)
    if any(len(s.n) != n_docs for s in (*a, *b)):
        raise CrosslayerError(
            "the dictionaries were scored on different documents",
            "score every seed of both dictionaries on the same tokens",
        )
    sa = np.array([dictionary_score(s) for s in a])
    sb = np.array([dictionary_score(s) for s in b])
    W = bootstrap_weights(n_docs, n_boot, seed)
    ba = np.mean([dictionary_score(s, W) for s in a], axis=0)
    bb = np.mean([dictionary_score(s, W) for s in b], axis=0)
    boot = ba - bb
    ok = np.isfinite(boot)
    lo, hi = np.percentile(boot[ok], [2.5, 97.5])
    p_boot = 2 * min(float((boot[ok] <= 0).mean()), float((boot[ok] >= 0).mean()))
    p_boot = min(p_boot, 1.0)
    res = 1.0 / ok.sum()
    return {
        "a": {
            "per_seed": sa.tolist(),
            "mean": float(sa.mean()),
            "n_features": [s.n_features for s in a],
        },
        "b": {
            "per_seed": sb.tolist(),
            "mean": float(sb.mean()),
            "n_features": [s.n_features for s in b],
        },
        "difference": float(sa.mean() - sb.mean()),
        "seed_level": seed_interval(sa, sb),
        "document_bootstrap": {
            "n_docs": n_docs,
            "n_boot": int(ok.sum()),
            "ci95": [float(lo), float(hi)],
            "p": max(p_boot, res),
            "p_text": format_p(p_boot, res),
        },
    }
