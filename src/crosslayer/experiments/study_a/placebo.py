"""The placebo dictionary's input: as much variance removed as the transcoder removes, none of
it linear in the source.

The residual SAE reads ``R = Y - T(X)`` (``T`` the ridge transcoder). Against the baseline SAE
(on ``Y``) its features differ for two reasons at once: the X-predictable part is gone, and
*some* variance is gone at all (a dictionary of a smaller signal has other features). The
placebo keeps the second and drops the first: it removes the same variance from ``Y`` along
random directions of the part the transcoder left,

    ``Y_placebo = Y - M R``,   ``M = Q diag(m) Qᵀ``,

* ``Q``: a Haar-random orthonormal basis of ``R^d`` (QR of a seeded Gaussian matrix, column
  signs fixed so that ``diag(R_qr) > 0``), taken in its column order;
* ``m = (1, …, 1, m_k, 0, …, 0)``: the first ``k`` directions of ``R`` removed whole and the
  next one in part, ``k`` and ``m_k ∈ (0, 1]`` chosen so that the variance removed,
  ``tr Cov(Y) - tr Cov(Y_placebo)``, equals the transcoder's ``tr Cov(Y) - tr Cov(R)``
  exactly on the tokens it is fitted on (the training split).

What this gives, by construction: the removed part ``M R`` is a linear map of the ridge
residual, so a linear map from ``X`` predicts none of it on the training tokens (the ridge's
normal equations; exactly 0 as the ridge strength goes to 0), and ``Y_placebo`` keeps all of
``T(X)``. Residual minus placebo is then the effect of *which* variance was removed.

With ``a_i = q_iᵀ Cov(R, Y) q_i`` and ``b_i = q_iᵀ Cov(R) q_i`` the removed variance is
``Σ_i 2 m_i a_i - m_i² b_i`` (``M`` is diagonal in the basis ``Q``), so ``k`` is a cumulative
sum and ``m_k`` the smaller root of a quadratic. ``removed_share`` and :func:`linear_signal`
describe any removal (ours, the placebo's, the study's Adam residual) on the same terms.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crosslayer import fs
from crosslayer.errors import CrosslayerError
from crosslayer.transcoder import AffineTranscoder


def _centred_cov(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``Cov(A, B)`` ``[d, d]`` in float64 (population normalisation, ``1/n``)."""
    a = np.asarray(A, dtype=np.float64)
    b = np.asarray(B, dtype=np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    return np.asarray(a.T @ b / len(a))


def total_variance(Y: np.ndarray) -> float:
    """``tr Cov(Y)``: the summed variance of every dimension (float64)."""
    y = np.asarray(Y, dtype=np.float64)
    return float(y.var(0).sum())


def removed_share(Y: np.ndarray, Z: np.ndarray) -> float:
    """``1 - tr Cov(Z) / tr Cov(Y)``: the share of ``Y``'s variance a removal ``Y → Z`` took."""
    return 1.0 - total_variance(Z) / total_variance(Y)


def random_basis(d: int, seed: int) -> np.ndarray:
    """A Haar-random orthonormal basis ``[d, d]`` (columns), deterministic in ``seed``."""
    g = np.random.default_rng(seed).standard_normal((d, d))
    q, r = np.linalg.qr(g)
    return np.asarray(q * np.sign(np.diag(r)))  # the sign fix makes the law exactly Haar


@dataclass
class PlaceboRemoval:
    """``Y ↦ Y - M R`` with ``M = Q_k diag(m) Q_kᵀ`` (module docstring); fitted on train."""

    directions: np.ndarray  # [d, k] the columns of Q that are used (m_i > 0)
    weights: np.ndarray  # [k] m_i: 1 for all but the last, which is in (0, 1]
    removed_variance: float  # tr Cov(Y) - tr Cov(Y_placebo) on the fitting tokens
    total_variance: float  # tr Cov(Y) on the fitting tokens
    seed: int

    @property
    def removed_share(self) -> float:
        return self.removed_variance / self.total_variance

    def removed(self, R: np.ndarray) -> np.ndarray:
        """``M R``: the part taken away (float32 ``[n, d]``)."""
        r = np.asarray(R, dtype=np.float64)
        return ((r @ self.directions) * self.weights @ self.directions.T).astype(np.float32)

    def transform(self, Y: np.ndarray, R: np.ndarray) -> np.ndarray:
        """``Y - M R`` (float32): what the placebo SAE reads. ``R`` is ``Y - T(X)``."""
        if np.shape(Y) != np.shape(R):
            raise CrosslayerError(
                f"Y has shape {np.shape(Y)} but the residuals R have {np.shape(R)}",
                "pass the residuals of the same tokens: R = Y - transcoder(X)",
            )
        return (np.asarray(Y, dtype=np.float32) - self.removed(R)).astype(np.float32)

    def save(self, path: Path) -> None:
        """Write ``path`` (.npz) atomically: a killed write leaves no file behind."""
        fs.atomic_write_npz(
            path,
            directions=self.directions,
            weights=self.weights,
            removed_variance=self.removed_variance,
            total_variance=self.total_variance,
            seed=self.seed,
        )

    @classmethod
    def load(cls, path: Path) -> PlaceboRemoval:
        with np.load(path) as f:
            return cls(
                f["directions"],
                f["weights"],
                float(f["removed_variance"]),
                float(f["total_variance"]),
                int(f["seed"]),
            )

    def summary(self) -> dict[str, Any]:
        return {
            "removed_variance": self.removed_variance,
            "removed_share": self.removed_share,
            "n_directions": len(self.weights),
            "last_weight": float(self.weights[-1]) if len(self.weights) else None,
            "seed": self.seed,
            "definition": "Y_placebo = Y - M R, R = Y - ridge(X), M = Q diag(m) Qᵀ over a "
            "seeded Haar-random basis Q: the first directions of R removed whole, the last "
            "in part, so that tr Cov(Y) - tr Cov(Y_placebo) equals the transcoder's "
            "tr Cov(Y) - tr Cov(R) on the training tokens",
        }


def fit_placebo(
    Y: np.ndarray, R: np.ndarray, *, seed: int, removed_variance: float | None = None
) -> PlaceboRemoval:
    """The placebo removal of the module docstring, fitted on ``Y`` and its residuals ``R``.

    ``removed_variance``: how much to remove (default: the transcoder's, ``tr Cov(Y) -
    tr Cov(R)``). Raises when the residual holds less removable variance than that (the
    transcoder explained about half of ``Y`` or more: no placebo of equal size exists).
    """
    Y = np.asarray(Y)
    R = np.asarray(R)
    if Y.ndim != 2 or Y.shape != R.shape or len(Y) < 2:
        raise CrosslayerError(
            f"Y {Y.shape} and R {R.shape} must be the same [n >= 2, d] shape",
            "pass the target activations and their residuals Y - transcoder(X) of the same tokens",
        )
    total = total_variance(Y)
    target = total - total_variance(R) if removed_variance is None else float(removed_variance)
    if not 0 <= target < total:
        raise CrosslayerError(
            f"cannot remove {target:.4g} of a total variance {total:.4g}",
            "the removed variance must be in [0, tr Cov(Y)); check that R = Y - transcoder(X)",
        )
    Q = random_basis(Y.shape[1], seed)
    a = np.einsum("ij,ij->j", Q, _centred_cov(R, Y) @ Q)  # q_iᵀ Cov(R, Y) q_i
    b = np.einsum("ij,ij->j", Q, _centred_cov(R, R) @ Q)  # q_iᵀ Cov(R) q_i
    whole = np.cumsum(2 * a - b)  # removed after taking directions 0..i whole
    reached = np.flatnonzero(whole >= target)  # (2a - b ≈ b > 0, but do not assume it)
    if reached.size == 0:
        raise CrosslayerError(
            f"the residuals hold {whole[-1]:.4g} of removable variance, less than the "
            f"{target:.4g} the transcoder removed (it explains about half of the target or more)",
            "the placebo needs a transcoder that explains less than half of the target's "
            "variance; skip the placebo dictionary for this pair of hooks",
        )
    k = int(reached[0])  # the first direction that reaches the target
    rest = target - (whole[k - 1] if k else 0.0)
    m_k = _partial_weight(a[k], b[k], rest)
    weights = np.append(np.ones(k), m_k)
    removed = float(np.sum(2 * weights * a[: k + 1] - weights**2 * b[: k + 1]))
    return PlaceboRemoval(Q[:, : k + 1].copy(), weights, removed, total, seed)


def _partial_weight(a: float, b: float, rest: float) -> float:
    """``m ∈ [0, 1]`` with ``2 m a - m² b = rest`` (the smaller root: removal grows with m)."""
    if b <= 1e-300:
        return min(1.0, rest / (2 * a)) if a > 0 else 1.0
    disc = max(a * a - b * rest, 0.0)
    return float(np.clip((a - np.sqrt(disc)) / b, 0.0, 1.0))


def linear_signal(
    X_train: np.ndarray, Z_train: np.ndarray, X_heldout: np.ndarray, Z_heldout: np.ndarray
) -> dict[str, float]:
    """How much of ``Z`` a ridge map from ``X`` explains: train and held-out explained variance.

    The ridge strength is chosen by GCV on train (:class:`~crosslayer.transcoder.
    AffineTranscoder`); explained variance is variance-weighted (1 - Σ SSE / Σ SST over dims).
    For our residual this is ~0 on train by construction; for a placebo's removed part too;
    for the study's Adam residual it is what the recipe failed to remove.
    """
    ridge = AffineTranscoder().fit(X_train, Z_train)
    return {
        "train_ev": float(ridge.evaluate(X_train, Z_train).explained_variance),
        "heldout_ev": float(ridge.evaluate(X_heldout, Z_heldout).explained_variance),
        "alpha": float(ridge.alpha_),
    }


def describe_removals(
    X: tuple[np.ndarray, np.ndarray],
    Y: tuple[np.ndarray, np.ndarray],
    inputs: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, dict[str, Any]]:
    """Per dictionary input ``Z`` (train, held-out): the variance share removed from ``Y`` and
    the linear signal from ``X`` left in ``Z``, on both splits.

    This is the cheap half of explaining the seed study's small gap: the study's Adam recipe
    leaves most of the X-linear signal in its "residual", ours leaves none on train.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, (z_train, z_heldout) in inputs.items():
        out[name] = {
            "removed_share_train": removed_share(Y[0], z_train),
            "removed_share_heldout": removed_share(Y[1], z_heldout),
            "linear_signal_left": linear_signal(X[0], z_train, X[1], z_heldout),
        }
    return out
