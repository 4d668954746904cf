"""Ridge regression from sufficient statistics: one eigendecomposition, any alpha, any targets.

Alphas are relative: the penalty added to the covariance is ``alpha * trace(Cxx) / d_in``, so
one grid serves any activation scale and any number of tokens. The intercept is not penalised
(the fit is on statistics centred around the train means). Alpha is chosen on held-out
statistics when there are some (:meth:`RidgeEigen.sse_path`), else by generalised
cross-validation on the train statistics (:meth:`RidgeEigen.gcv_path`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.linalg.stats import SufficientStats
from crosslayer.metrics import RegressionReport, colsum, report_from_sums

DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-8, 2, 21))
F64 = torch.float64


# The eigen primitives every ridge path here is built from (RidgeEigen below, the
# cross-fitted probes of crosslayer.crossfit, the layer decomposition).


def eigh_psd(cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cov = V diag(λ) Vᵀ`` of a covariance: ``(λ, V)``, λ clamped at 0 (round-off makes a
    null direction slightly negative)."""
    evals, V = torch.linalg.eigh(cov)
    return evals.clamp(min=0.0), V


def inverse_or_zero(lam: torch.Tensor) -> torch.Tensor:
    """``1/lam``, 0 where lam is 0 (alpha 0 on a null direction: the minimum-norm solution)."""
    return torch.where(lam > 0, 1.0 / lam.clamp(min=1e-300), torch.zeros_like(lam))


def sse_from_stats(
    coef: torch.Tensor, g: torch.Tensor, h: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """Per-target squared error of centred coefficients ``coef [d_in, m]`` from a set's centred
    statistics: scatter ``g = Σ xxᵀ``, cross ``h = Σ x yᵀ`` and ``c = Σ y²`` per target."""
    return c - 2 * (coef * h).sum(0) + (coef * (g @ coef)).sum(0)


def sse_path_per_target(
    V: torch.Tensor,
    evals: torch.Tensor,
    M: torch.Tensor,
    q: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    penalties: np.ndarray,
) -> torch.Tensor:
    """Validation squared error ``[n_penalties, m]`` of ``coef(p) = V diag(1/(λ+p)) q`` for
    every absolute penalty ``p`` and target, from the validation statistics alone.

    ``M = Vᵀ g V`` is the validation scatter in the eigenbasis, ``h`` and ``c`` its cross
    term and Σy² (as in :func:`sse_from_stats`): ``SSE = c - 2 Σ D a + (D∘q)ᵀ M (D∘q)``
    with ``D = 1/(λ+p)`` and ``a = q ∘ (Vᵀ h)``, O(d_in²·m) per penalty after the set-up.

    The products run in ``M``'s dtype (``V``, ``q`` and ``h`` are cast to it) and every sum
    over ``d_in`` is taken in float64. In float64 the path is exact to round-off; in float32
    (2-3x faster on CPU) each term carries a relative error of ~1e-6, so ``SSE = c - 2a +
    quad``, which cancels by ~1/(1-R²) for well-predicted targets, can swap two alphas whose
    SSE differ by less than that: harmless where only the chosen fit's score matters (the
    swapped alphas fit equally well), not where the choice itself is compared.
    """
    work = M.dtype
    q = q.to(work)
    a = (q * (V.to(work).T @ h.to(work))).double()  # [d, m]
    lam = evals.to(F64)
    D = torch.stack([inverse_or_zero(lam + p) for p in penalties])  # [n_penalties, d]
    out = c.to(F64)[None, :] - 2 * (D @ a)  # the linear term of every penalty: one product
    return out + _quadratic_per_penalty(D, M, q)


def _quadratic_per_penalty(D: torch.Tensor, M: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``(D_i∘q)ᵀ M (D_i∘q)`` ``[n_penalties, m]``: one product per penalty in ``M``'s dtype
    (``q`` already in it), each summed over ``d_in`` in float64."""
    out = torch.empty(len(D), q.shape[1], dtype=F64, device=q.device)
    for i in range(len(D)):
        dq = D[i].to(M.dtype)[:, None] * q
        out[i] = colsum(dq * (M @ dq))
    return out


class PenaltyPath:
    """:func:`sse_path_per_target`'s validation error for every penalty from one product.

    The quadratic term ``Σ_jl D_j q_j M_jl D_l q_l`` (``D = 1/(λ+p)``) costs a ``d × d``
    product per penalty when computed directly. By partial fractions, ``D_j D_l = (D_j -
    D_l) / (λ_l - λ_j)`` for ``λ_j ≠ λ_l``, so the off-diagonal pairs sum to ``2 Σ_j D_j q_j
    (N q)_j`` with ``N_jl = M_jl / (λ_l - λ_j)``: one product ``N q`` serves every penalty, and
    the rest is ``O(d·m)`` per penalty (the diagonal ``Σ_j D_j² q_j² M_jj``).

    The split divides by eigenvalue gaps, and at a large penalty its terms are ``O(1/p)``
    while their sum is ``O(1/p²)`` (``Σ_j q_j (N q)_j = 0``: N is antisymmetric, as M is
    symmetric), so round-off is amplified by about ``(λ + p) / gap``. The product therefore
    runs in float64 whatever the inputs' dtype, and pairs closer than ``gap`` times ``max λ
    + max p`` (amplification above ~1e6) are summed exactly for each penalty instead. When
    there are more such pairs than ``4 d`` (a degenerate spectrum, e.g. fewer tokens than
    inputs), or a penalty leaves ``λ + p = 0`` (``D`` is set to 0 there, which the identity
    does not cover), the path falls back to one product per penalty, as before.
    """

    def __init__(
        self, evals: torch.Tensor, M: torch.Tensor, penalties: np.ndarray, gap: float = 1e-6
    ) -> None:
        lam = evals.to(F64)
        p = torch.as_tensor(np.asarray(penalties, dtype=np.float64), device=lam.device)
        d = lam.numel()
        self.D = torch.stack([inverse_or_zero(lam + pi) for pi in p])  # [n_penalties, d]
        M = M.to(F64)
        self.M: torch.Tensor | None = None  # kept only for the dense fall-back
        self.N: torch.Tensor | None = None
        diff = lam[None, :] - lam[:, None]  # [j, l] = λ_l - λ_j
        close = diff.abs() <= gap * float(lam.max() + p.max())
        eye = torch.eye(d, dtype=torch.bool, device=lam.device)
        pairs = (close & ~eye).nonzero()
        if bool((lam[None, :] + p[:, None] <= 0).any()) or len(pairs) > 4 * d:
            self.M = M
            return
        self.N = torch.where(close, 0.0, M / torch.where(close, 1.0, diff))
        self.diag = M.diagonal().clone()
        self.rows, self.cols = pairs[:, 0], pairs[:, 1]
        self.m_pairs = M[self.rows, self.cols]

    def sse(self, q: torch.Tensor, vh: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``[n_penalties, m]`` validation SSE from ``q [d, m]``, ``Vᵀh [d, m]`` and ``c [m]``
        (the arguments of :func:`sse_path_per_target`, ``h`` already in the eigenbasis)."""
        q = q.to(F64)
        D = self.D
        out = c.to(F64)[None, :] - 2 * (D @ (q * vh.to(F64)))
        if self.N is None:
            assert self.M is not None
            return out + _quadratic_per_penalty(D, self.M, q)
        out += 2 * (D @ (q * (self.N @ q)))  # the one d x d product
        out += (D * D) @ (q * q * self.diag[:, None])
        if len(self.rows):
            qq = q[self.rows] * q[self.cols] * self.m_pairs[:, None]
            out += (D[:, self.rows] * D[:, self.cols]) @ qq
        return out


class RidgeEigen:
    """The train covariance ``Cxx = V Λ Vᵀ``, decomposed once; ridge for any alpha and targets.

    With ``Q = Vᵀ Cxy`` the ridge coefficients are ``B(α) = V diag(1/(λ+αs)) Q`` (``[d_in,
    d_out]``, ``s = trace(Cxx)/d_in``), so each alpha and each block of targets costs a
    diagonal scaling instead of a new solve. Shared by the transcoder, the depth sweep and the
    per-feature regression probes.
    """

    def __init__(self, train: SufficientStats) -> None:
        if train.n < 2:
            raise CrosslayerError(
                "fewer than two training tokens",
                "fit on at least two tokens (many more than d_in in practice)",
            )
        self.n = train.n
        self.mean_x = train.sum_x / train.n
        g = train.xtx - train.n * torch.outer(self.mean_x, self.mean_x)
        self.evals, self.V = eigh_psd(g / train.n)
        self.scale = float(self.evals.sum()) / self.evals.numel()
        if self.scale <= 0:
            raise CrosslayerError(
                "the source activations are constant over the training tokens",
                "check the source hook and that the store holds real data",
            )

    def project(self, train: SufficientStats) -> tuple[torch.Tensor, torch.Tensor]:
        """``Q = Vᵀ Cxy`` for the targets in ``train``, and their train means."""
        mean_y = train.sum_y / train.n
        h = train.xty - train.n * torch.outer(self.mean_x, mean_y)
        return self.V.T @ (h / train.n), mean_y

    def shrink(self, alpha: float) -> torch.Tensor:
        """``1/(λ + α s)`` per eigen-direction."""
        return 1.0 / (self.evals + alpha * self.scale)

    def coef(self, q: torch.Tensor, alpha: float) -> torch.Tensor:
        """Ridge coefficients ``[d_in, d_out]`` on centred data."""
        return self.V @ (self.shrink(alpha)[:, None] * q)

    def sse_path(
        self, q: torch.Tensor, mean_y: torch.Tensor, val: SufficientStats, alphas: np.ndarray
    ) -> np.ndarray:
        """Σ squared error on ``val`` for every alpha, from ``val``'s statistics alone.

        ``SSE(α) = c - 2 Σ_k D_k a_k + Dᵀ M D`` with ``D = 1/(λ+αs)``, ``a_k = Σ_j Q_kj (VᵀH)_kj``
        and ``M = (VᵀGV) ∘ (QQᵀ)``, where G, H, c are val's statistics centred on the train
        means: O(d_in²) per alpha after one O(d_in²·d_out) set-up.
        """
        g, h, c = val.centered(self.mean_x, mean_y)
        a = (q * (self.V.T @ h)).sum(1)
        m = (self.V.T @ g @ self.V) * (q @ q.T)
        out = []
        for alpha in alphas:
            d = self.shrink(float(alpha))
            out.append(float(c.sum() - 2 * d @ a + d @ m @ d))
        return np.asarray(out)

    def gcv_path(
        self, q: torch.Tensor, mean_y: torch.Tensor, train: SufficientStats, alphas: np.ndarray
    ) -> np.ndarray:
        """Generalised cross-validation ``(SSE/n) / (1 - df/n)²`` on the train statistics."""
        sse = self.sse_path(q, mean_y, train, alphas)
        df = np.array([float((self.evals * self.shrink(float(a))).sum()) for a in alphas])
        return (sse / self.n) / np.maximum(1.0 - df / self.n, 1e-12) ** 2

    def sse_per_dim(
        self, coef: torch.Tensor, mean_y: torch.Tensor, val: SufficientStats
    ) -> torch.Tensor:
        """Per-output Σ squared error of centred coefficients ``coef`` on ``val``'s statistics."""
        g, h, c = val.centered(self.mean_x, mean_y)
        return sse_from_stats(coef, g, h, c)


@dataclass
class RidgeSolution:
    """A ridge fit for one block of targets, with the criterion that chose its alpha."""

    coef: torch.Tensor  # [d_in, d_out], applied to x - mean_x
    mean_y: torch.Tensor  # intercept in centred form
    alpha: float  # relative (times trace(Cxx)/d_in)
    criterion: str  # "heldout" | "gcv" | "single"
    scores: np.ndarray  # held-out SSE or GCV per alpha
    train_report: RegressionReport
    heldout_report: RegressionReport | None


def solve_ridge(
    eig: RidgeEigen, train: SufficientStats, val: SufficientStats | None, alphas: np.ndarray
) -> RidgeSolution:
    """Pick alpha (held-out SSE, else GCV) and report both splits from statistics alone."""
    q, mean_y = eig.project(train)
    if len(alphas) == 1:
        scores, criterion = np.array([np.nan]), "single"
    elif val is not None and val.n > 0:
        scores, criterion = eig.sse_path(q, mean_y, val, alphas), "heldout"
    else:
        scores, criterion = eig.gcv_path(q, mean_y, train, alphas), "gcv"
    alpha = float(alphas[0] if criterion == "single" else alphas[int(np.nanargmin(scores))])
    coef = eig.coef(q, alpha)

    def report(stats: SufficientStats) -> RegressionReport:
        sse = eig.sse_per_dim(coef, mean_y, stats).clamp(min=0.0)
        return report_from_sums(stats.n, stats.sum_y, stats.sum_y2, sse)

    return RidgeSolution(
        coef,
        mean_y,
        alpha,
        criterion,
        scores,
        report(train),
        report(val) if val is not None and val.n > 1 else None,
    )
