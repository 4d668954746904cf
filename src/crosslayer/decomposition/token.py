"""``token``: E[y | token id] cross-fitted and shrunk toward the linear prediction.

For outer fold ``k`` with linear fit ``ŷ_lin = x W_k + b_k`` (fitted on ``T_k``), the token
predictor adds each token's mean residual on ``T_k``, shrunk with a pseudo-count λ:

``ŷ_i = ŷ_lin(x_i) + N_t / (N_t + λ) · r̄_t``,  ``r̄_t`` = mean of ``y - ŷ_lin`` over the
``N_t`` rows of token ``t`` in ``T_k``.

An unseen token (``N_t = 0``) gets the linear prediction; λ = ∞ is the linear predictor
itself, λ = 0 the raw token mean. λ is chosen per dimension by leave-one-fold-out CV inside
``T_k`` on the residuals of the same linear fit. When X is a function of the token id (the
embeddings), any function of the current embedding is a function of the token, so this is
its ceiling up to the shrinkage. All sums are per (fold, token): after one pass over the
rows each λ costs ``O(G m)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crosslayer.crossfit.stats import F64
from crosslayer.decomposition.ridge import FoldSums, TargetSums

DEFAULT_STRENGTHS: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, np.inf)


@dataclass
class TokenSums:
    """Per fold ``f``: the tokens it holds (``ids[f]``, global index), their counts and Σx."""

    ids: list[torch.Tensor]  # [G_f] int64
    count: list[torch.Tensor]  # [G_f] float64
    sx: list[torch.Tensor]  # [G_f, d] float64, the linear design's (centred) columns
    n_tokens: int  # G, distinct tokens over all folds

    def target(
        self, rows: list[np.ndarray], local: list[np.ndarray], y: np.ndarray
    ) -> list[torch.Tensor]:
        """Per fold Σy per token ``[G_f, m]``; ``rows[f]`` store rows, ``local[f]`` their slot."""
        out = []
        for f, (r, loc) in enumerate(zip(rows, local, strict=True)):
            s = torch.zeros(len(self.ids[f]), y.shape[1], dtype=F64)
            s.index_add_(0, torch.as_tensor(loc), torch.as_tensor(y[r]).double())
            out.append(s)
        return out


def _weight(cnt: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``N / (N + λ)``; 0 where unseen or λ = ∞."""
    w = cnt / (cnt + lam).clamp(min=1e-300)
    return torch.where(torch.isinf(lam) | (cnt == 0), torch.zeros_like(w), w)


def _residual_sq(
    x: FoldSums, y: TargetSums, f: int, W: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """Σ over fold f's rows of ``(y - xW - b)²`` per dimension, from the fold's sums."""
    n = float(x.n[f])
    return (
        y.syy[f]
        - 2 * ((W * y.sxy[f]).sum(0) + b * y.sy[f])
        + (W * (x.sxx[f] @ W)).sum(0)
        + 2 * b * (x.sx[f] @ W)
        + n * b**2
    )


def token_offsets(
    k: int,
    toks: TokenSums,
    sy_tok: list[torch.Tensor],
    x: FoldSums,
    y: TargetSums,
    W_k: np.ndarray,
    b_k: np.ndarray,
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS,
) -> tuple[torch.Tensor, np.ndarray]:
    """Outer fold k's shrunk residual means ``[G, m]`` (float32) and the chosen λ per dim."""
    K = len(toks.ids)
    W, b = torch.as_tensor(W_k).double(), torch.as_tensor(b_k).double()
    G, m = toks.n_tokens, W.shape[1]
    train = [f for f in range(K) if f != k]
    res = {f: sy_tok[f] - toks.sx[f] @ W - toks.count[f][:, None] * b for f in train}
    cnt_T = torch.zeros(G, dtype=F64)
    sum_T = torch.zeros(G, m, dtype=F64)
    for f in train:
        cnt_T.index_add_(0, toks.ids[f], toks.count[f])
        sum_T.index_add_(0, toks.ids[f], res[f])
    lam = torch.as_tensor(np.sort(np.asarray(strengths, dtype=np.float64)))
    path = torch.zeros(len(lam), m, dtype=F64)
    for i in train:
        u, n_i, s_i = toks.ids[i], toks.count[i], res[i]
        cnt = cnt_T[u] - n_i
        d = torch.where(cnt[:, None] > 0, (sum_T[u] - s_i) / cnt.clamp(min=1)[:, None], 0.0)
        w = _weight(cnt[None, :], lam[:, None])  # [A, G_i]
        rr = _residual_sq(x, y, i, W, b)
        path += rr[None, :] - 2 * (w @ (d * s_i)) + w.square() @ (d.square() * n_i[:, None])
    best = path.argmin(0)  # the least shrinkage among ties
    lam_sel = lam[best]  # [m]
    mean = torch.where(cnt_T[:, None] > 0, sum_T / cnt_T.clamp(min=1)[:, None], 0.0)
    offset = _weight(cnt_T[:, None], lam_sel[None, :]) * mean
    return offset.float(), lam_sel.numpy()
