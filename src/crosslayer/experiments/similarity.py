"""Similarity between representations: cosine matrices and linear CKA."""

from __future__ import annotations

import numpy as np
import torch


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
