"""Similarity between representations: cosine matrices and linear CKA."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import stats


def cosine_matrix(
    a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray | None = None
) -> np.ndarray:
    """Cosine similarity between every row of ``a`` [m, d] and every row of ``b`` [n, d].

    Computed in float64. A zero row (e.g. an SAE code with no active latent) has no
    direction; its cosines are NaN rather than a misleading 0.
    """
    x = torch.as_tensor(a).double()
    y = x if b is None else torch.as_tensor(b).double()
    xn, yn = x.norm(dim=-1, keepdim=True), y.norm(dim=-1, keepdim=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((x / xn) @ (y / yn).T).numpy()
    return out


def paired_cosine(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Row-wise cosine of ``a[i]`` with ``b[i]`` (float64), NaN where either row is zero."""
    x, y = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))).numpy()


def _centred(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) - x.mean(0, dtype=np.float64)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between two sets of representations of the same
    n tokens: ``||Yc' Xc||_F^2 / (||Xc' Xc||_F ||Yc' Yc||_F)`` with column-centred X, Y.

    The feature-space form costs n·d² rather than n², so many tokens are cheap.
    """
    return float(cka_matrix([x, y])[0, 1])


def cka_matrix(reps: list[np.ndarray]) -> np.ndarray:
    """Linear CKA between every pair of representation sets (symmetric, ones on the diagonal).

    Feature form (one [d_i, d_j] product per pair) when every width is at most the number of
    tokens; otherwise the equivalent Gram form <K_i, K_j> / (|K_i| |K_j|) with K = Xc Xc', so
    that 16k-wide SAE codes never need a 16k x 16k product.
    """
    rows = {r.shape[0] for r in reps}
    if len(rows) != 1:
        raise ValueError(f"CKA needs the same tokens in every set, got row counts {sorted(rows)}")
    centred = [_centred(r) for r in reps]
    gram = max(r.shape[1] for r in reps) > rows.pop()
    if gram:
        kernels = [c @ c.T for c in centred]
        self_norm = [np.linalg.norm(k) for k in kernels]
    else:
        self_norm = [np.linalg.norm(c.T @ c) for c in centred]
    out = np.eye(len(reps))
    for i in range(len(reps)):
        for j in range(i + 1, len(reps)):
            if gram:
                cross = float(np.sum(kernels[i] * kernels[j]))
            else:
                cross = float(np.linalg.norm(centred[j].T @ centred[i]) ** 2)
            out[i, j] = out[j, i] = cross / (self_norm[i] * self_norm[j])
    return out


def grouped_cka(
    reps: list[np.ndarray],
    groups: np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    weights: np.ndarray | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Linear CKA between every pair of representation sets, raw and standardised (each
    dimension z-scored first), on all rows, with a bootstrap over ``groups`` (e.g. contexts:
    the unit that varies; rows of one group are resampled together).

    Returns ``{"raw" | "standardised": {"matrix", "ci_low", "ci_high", "boot"}}``. Why
    standardised: in Gemma's residual stream a few dimensions carry most of the variance, and
    raw CKA is then mostly their CKA; z-scoring gives every dimension the same weight.

    How the bootstrap stays cheap on 30k tokens: for a pair of sets with centred (and maybe
    scaled) rows Z, W split into groups g, the CKA numerator of a resample with group counts
    ``w`` is ``||sum_g w_g Z_g' W_g||_F^2 = w' M w`` with ``M_gh = <Z_g' W_g, Z_h' W_h>_F``
    (likewise the denominators), so each replicate is three small quadratic forms. A group
    drawn k times enters its own term ``M_gg`` k times, not k² times: pairing a context's
    tokens with their own copies inflates CKA (its self terms carry the noise floor), and
    every replicate would sit above the estimate. Replicates centre and scale with the
    full-sample mean and sd (the resample's own would differ by O(1/n), left out). The CI is
    bias-corrected (see :func:`_bc_interval`). ``weights`` [B, G] replaces the random group
    counts (for tests).
    """
    labels = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    n = {r.shape[0] for r in reps}
    if len(n) != 1 or n.pop() != len(labels):
        raise ValueError("CKA needs the same rows in every set and one group label per row")
    order = np.argsort(labels, kind="stable")  # groups become contiguous slices
    bounds = np.r_[0, np.cumsum(np.bincount(labels))]
    n_groups = len(bounds) - 1
    centred, inv_sd = [], []
    for r in reps:
        x = np.asarray(r)[order]
        mean = x.mean(0, dtype=np.float64)
        sd = x.std(0, dtype=np.float64)
        centred.append((x - mean).astype(np.result_type(x.dtype, np.float32)))  # keeps f64
        inv_sd.append(1.0 / np.where(sd > 0, sd, 1.0))

    def grams(i: int, j: int) -> dict[str, np.ndarray]:
        per_group = np.stack([
            centred[i][a:b].astype(np.float64).T @ centred[j][a:b].astype(np.float64)
            for a, b in itertools.pairwise(bounds)
        ])  # fmt: skip
        flat = per_group.reshape(n_groups, -1)
        scaled = (per_group * inv_sd[i][:, None] * inv_sd[j][None, :]).reshape(n_groups, -1)
        return {"raw": flat @ flat.T, "standardised": scaled @ scaled.T}

    k = len(reps)
    gram = {(i, j): grams(i, j) for i in range(k) for j in range(i, k)}
    if weights is None:
        rng = np.random.default_rng(seed)
        weights = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    w = np.asarray(weights, np.float64)
    ones = np.ones(n_groups)
    out: dict[str, dict[str, np.ndarray]] = {}
    for space in ("raw", "standardised"):
        full, boot = np.eye(k), np.ones((len(w), k, k))

        def quad(i: int, j: int, s: str = space) -> tuple[float, np.ndarray]:
            m = gram[(i, j)][s]
            # a context drawn twice is not paired with its own copy (see the docstring)
            extra = (w * w - w) @ np.diag(m)
            return float(ones @ m @ ones), np.einsum("bg,gh,bh->b", w, m, w) - extra

        self_terms = [quad(i, i) for i in range(k)]
        for i in range(k):
            for j in range(i + 1, k):
                num, num_b = quad(i, j)
                (di, di_b), (dj, dj_b) = self_terms[i], self_terms[j]
                full[i, j] = full[j, i] = num / np.sqrt(di * dj)
                boot[:, i, j] = boot[:, j, i] = num_b / np.sqrt(di_b * dj_b)
        lo, hi = _bc_interval(full, boot, level)
        out[space] = {"matrix": full, "ci_low": lo, "ci_high": hi, "boot": boot}
    return out


def _bc_interval(est: np.ndarray, boot: np.ndarray, level: float) -> tuple[np.ndarray, ...]:
    """Bias-corrected percentile interval (Efron 1981) per cell. Linear CKA is biased upward
    in small samples, and a resample (duplicated contexts, fewer distinct tokens) more so: the
    plain percentile interval sits above the estimate; BC shifts the percentiles by the share
    of replicates below the estimate."""
    b = len(boot)
    below = (boot < est).mean(0) + 0.5 * (boot == est).mean(0)
    z0 = stats.norm.ppf(np.clip(below, 1 / (2 * b), 1 - 1 / (2 * b)))
    tail = (1 - level) / 2
    q_lo = stats.norm.cdf(2 * z0 + stats.norm.ppf(tail))
    q_hi = stats.norm.cdf(2 * z0 + stats.norm.ppf(1 - tail))
    lo, hi = np.empty_like(est), np.empty_like(est)
    for idx in np.ndindex(est.shape):
        col = boot[(slice(None), *idx)]
        lo[idx], hi[idx] = np.quantile(col, q_lo[idx]), np.quantile(col, q_hi[idx])
    return lo, hi
