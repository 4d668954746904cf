"""Per-feature probes: how well an early layer predicts every alive feature of an SAE.

For each feature column ``f_j`` of ``F [n_tokens, n_features]`` (SAE activations at a late hook)
and inputs ``X [n_tokens, d]`` (an early hook), two probes are fitted on the standardised X:

* a ridge regression ``f_j ≈ w·x + b``, closed form from one eigendecomposition of X'X shared by
  all features (:class:`crosslayer.linalg.RidgeEigen`, the transcoder's code), scored by
  held-out R²;
* an active/inactive logistic classifier (active = ``f_j > threshold``), class-balanced by
  weights (scikit-learn's ``class_weight="balanced"``) with L2 penalty ``||w||²/(2C)``, scored
  by held-out balanced accuracy and AUROC.

Both run over ``feature_chunk`` features per matrix product. The logistic problems of a chunk
are one sum of independent convex problems, minimised together by L-BFGS; this equals
``StandardScaler`` + ``LogisticRegression(C=C, class_weight="balanced")`` per feature.

:func:`study_protocol_probe` reproduces seed study A's protocol (threshold 0.1, subsample to
balance, 80/20 split, plain accuracy) with scikit-learn, one feature at a time, for comparison.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError
from crosslayer.linalg import RidgeEigen, SufficientStats, load_rows
from crosslayer.metrics import ArrayLike, RegressionAccumulator, as_tensor, check_2d, row_chunks

# Why a feature has NaN metrics; "ok" otherwise.
DEAD = "dead in train (never active)"
ALWAYS = "always active in train (no inactive token)"
ONE_CLASS_HELDOUT = "one class only in held-out"

FEATURE_CHUNK = 512  # features per matrix product (the default; the plan sizes memory by it)


class _Columns:
    """Feature activations as column blocks: an array [n, m] or ``fn(start, stop) -> [n, k]``."""

    def __init__(
        self, F: ArrayLike | Callable[[int, int], Any], n: int, n_features: int | None
    ) -> None:
        if callable(F):
            if n_features is None or n_features < 1:
                raise CrosslayerError(
                    "F is a function but n_features was not given",
                    "pass n_features=<number of SAE features> with it",
                )
            self.get, self.m = F, n_features
            return
        rows, self.m = check_2d("F", F)
        if rows != n:
            raise CrosslayerError(
                f"X has {n} rows but F has {rows}",
                "pass feature activations for the same tokens as X",
            )
        self.get = lambda j0, j1: F[:, j0:j1]

    def block(self, j0: int, j1: int, n: int, device: torch.device) -> torch.Tensor:
        f = as_tensor(self.get(j0, j1), device)
        if f.shape != (n, j1 - j0):
            raise CrosslayerError(
                f"feature block {j0}:{j1} has shape {tuple(f.shape)}, expected {(n, j1 - j0)}",
                "return [n_tokens, stop - start] blocks",
            )
        return f


@dataclass
class ProbeResults:
    """Held-out metrics per feature (NaN where undefined; ``status`` says why)."""

    r2: np.ndarray
    balanced_accuracy: np.ndarray
    auroc: np.ndarray
    density: np.ndarray  # fraction of train tokens where the feature is active
    n_active: np.ndarray  # active train tokens
    n_active_heldout: np.ndarray
    status: np.ndarray  # "ok" or the reason for NaN
    definitions: dict[str, str] = field(
        default_factory=lambda: {
            "r2": "held-out 1 - SS_res/SS_tot of the ridge probe, SS_tot around the held-out mean",
            "balanced_accuracy": "held-out (TPR + TNR)/2 of the logistic probe at logit 0",
            "auroc": "held-out area under the ROC curve of the logistic probe's logit",
            "density": "fraction of train tokens with activation > threshold",
        }
    )

    def summary(self) -> dict[str, Any]:
        """Counts by status and the mean/median of each metric over features where it is defined."""
        out: dict[str, Any] = {
            "n_features": len(self.status),
            "status": dict(Counter(self.status.tolist())),
        }
        for name in ("r2", "balanced_accuracy", "auroc"):
            v = getattr(self, name)
            v = v[np.isfinite(v)]
            out[name] = {
                "n": int(v.size),
                "mean": float(v.mean()) if v.size else None,
                "median": float(np.median(v)) if v.size else None,
            }
        return out


class FeatureProbes(BaseEstimator):
    """Vectorised ridge and class-balanced logistic probes for every feature of an SAE.

    Parameters
    ----------
    alpha: relative ridge strength (penalty ``alpha * trace(Cxx)/d``; on standardised X this is
        scikit-learn ``Ridge(alpha=alpha * n_tokens)``).
    C: inverse L2 strength of the logistic probes, as in scikit-learn.
    threshold: a feature is active where its activation is ``> threshold``.
    max_iter: L-BFGS iterations per chunk of features.
    feature_chunk: features per matrix product.
    target_chunk: columns of F read at a time (each is reduced to per-distinct-row sums).

    Learned: ``mean_``, ``scale_`` (standardisation of X), ``ridge_coef_ [m, d]``,
    ``ridge_intercept_ [m]``, ``logit_coef_ [m, d]``, ``logit_intercept_ [m]`` (both on
    standardised X; NaN for features without both classes), ``density_``, ``n_active_``,
    ``status_``.
    """

    def __init__(
        self,
        alpha: float = 1e-4,
        C: float = 1.0,
        threshold: float = 0.0,
        max_iter: int = 100,
        feature_chunk: int = FEATURE_CHUNK,
        target_chunk: int = 64,
        chunk_size: int = 8192,
        device: str | None = None,
    ) -> None:
        self.alpha = alpha
        self.C = C
        self.threshold = threshold
        self.max_iter = max_iter
        self.feature_chunk = feature_chunk
        self.target_chunk = target_chunk
        self.chunk_size = chunk_size
        self.device = device

    def fit(
        self,
        X: ArrayLike,
        F: ArrayLike | Callable[[int, int], Any],
        *,
        n_features: int | None = None,
    ) -> FeatureProbes:
        """Fit both probes for every feature; ``F`` is [n, m] or ``fn(start, stop)``.

        X is read by row chunks (a memmap is never copied whole when its rows repeat) and F
        by blocks of ``target_chunk`` columns, so memory grows with the number of tokens only
        through X's distinct rows and one ``[n, target_chunk]`` block.
        """
        self._check_params()
        dev = resolve_device(self.device)
        n, d = check_2d("X", X)
        cols = _Columns(F, n, n_features)
        self.mean_, self.scale_ = self._moments(X, n, d, dev)
        # Every quantity below is a sum over tokens, so identical rows can be merged with
        # their counts: exact, and several times fewer rows for token embeddings (one row
        # per vocabulary entry; 70k tokens of Wikipedia hold 12k distinct ones).
        rows = _DistinctRows(X, n, dev, self.chunk_size, self._standardise)
        xr, counts = rows.x, rows.counts  # standardised distinct rows, tokens per row
        base = SufficientStats.from_weighted_rows(
            xr, counts, device=dev, matmul_dtype=torch.float32
        )
        eig = RidgeEigen(base)
        # Whitening X (with the same eigendecomposition) makes each logistic problem nearly
        # isotropic, so L-BFGS needs far fewer passes; the floor keeps null directions finite.
        lam = eig.evals + 1e-3 * eig.scale
        whiten = (eig.V * lam.rsqrt()).float()  # P, [d, d]: xw = xs P, w = P u
        penalty = (1.0 / lam).float()  # ||P u||² = Σ u_k² / lam_k
        xw = xr @ whiten
        m = cols.m
        self.ridge_coef_ = np.full((m, d), np.nan, dtype=np.float32)
        self.ridge_intercept_ = np.full(m, np.nan, dtype=np.float32)
        self.logit_coef_ = np.full((m, d), np.nan, dtype=np.float32)
        self.logit_intercept_ = np.full(m, np.nan, dtype=np.float32)
        self.n_active_ = np.zeros(m, dtype=np.int64)
        for j0 in range(0, m, self.feature_chunk):
            j1 = min(j0 + self.feature_chunk, m)
            stats, pos = self._target_sums(base, cols, rows, j0, j1, n, dev)
            q, mean_f = eig.project(stats)
            self.ridge_coef_[j0:j1] = eig.coef(q, self.alpha).T.cpu().numpy()
            self.ridge_intercept_[j0:j1] = mean_f.cpu().numpy()
            n_act = pos.sum(0, dtype=torch.float64)  # exact integer counts
            self.n_active_[j0:j1] = n_act.round().long().cpu().numpy()
            both = ((n_act > 0) & (n_act < n)).nonzero().squeeze(1)
            if both.numel():
                u = self._fit_logistic(xw, penalty, pos[:, both], counts, n)
                w = torch.cat([whiten @ u[:-1], u[-1:]])
                idx = (j0 + both).cpu().numpy()
                self.logit_coef_[idx] = w[:-1].T.cpu().numpy()
                self.logit_intercept_[idx] = w[-1].cpu().numpy()
        self.density_ = self.n_active_ / n
        self.status_ = np.where(
            self.n_active_ == 0, DEAD, np.where(self.n_active_ == n, ALWAYS, "ok")
        ).astype(object)
        if not (self.n_active_ > 0).any():
            raise CrosslayerError(
                f"none of the {m} features is ever active (> {self.threshold}) "
                "in the training tokens",
                "check the SAE matches the hook, or lower the threshold",
            )
        self.n_features_in_ = d
        return self

    def _moments(
        self, X: ArrayLike, n: int, d: int, dev: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and scale (population std) of X's columns, by row chunks, summed in float64.

        Elementwise work stays in float32: the inputs are float32 already, so centring them
        in float32 loses nothing that matters (torch's float64 std took 4 s on 70k x 640,
        longer than all the logistic fits).
        """
        total = torch.zeros(d, dtype=torch.float64, device=dev)
        for r in row_chunks(n, self.chunk_size):
            total += as_tensor(X[r], dev).sum(0, dtype=torch.float64)
        mean = total / n
        sq = torch.zeros(d, dtype=torch.float64, device=dev)
        for r in row_chunks(n, self.chunk_size):
            sq += (as_tensor(X[r], dev) - mean.float()).square().sum(0, dtype=torch.float64)
        return mean, (sq / n).sqrt().clamp(min=1e-12)

    def _target_sums(
        self,
        base: SufficientStats,
        cols: _Columns,
        rows: _DistinctRows,
        j0: int,
        j1: int,
        n: int,
        dev: torch.device,
    ) -> tuple[SufficientStats, torch.Tensor]:
        """Ridge statistics of features ``j0:j1`` and their active counts per distinct row.

        F is read ``target_chunk`` columns at a time and reduced at once to sums over each
        distinct row, so no ``[n, feature_chunk]`` block is held.
        """
        k = j1 - j0
        r = len(rows.counts)
        fsum = torch.zeros(r, k, device=dev)
        pos = torch.zeros(r, k, device=dev)
        sum_y = torch.zeros(k, dtype=torch.float64, device=dev)
        sum_y2 = torch.zeros(k, dtype=torch.float64, device=dev)
        for b0 in range(j0, j1, self.target_chunk):
            b1 = min(b0 + self.target_chunk, j1)
            f = cols.block(b0, b1, n, dev)
            out = slice(b0 - j0, b1 - j0)
            fsum[:, out] = rows.sum(f)
            pos[:, out] = rows.sum((f > self.threshold).float())
            sum_y[out] = f.sum(0, dtype=torch.float64)
            sum_y2[out] = (f * f).sum(0, dtype=torch.float64)
        return base.with_target_sums(sum_y, sum_y2, (rows.x.T @ fsum).double()), pos

    def _fit_logistic(
        self,
        xw: torch.Tensor,
        penalty: torch.Tensor,
        pos: torch.Tensor,
        counts: torch.Tensor,
        n: int,
    ) -> torch.Tensor:
        """Class-balanced L2 logistic regression for ``k`` features at once: weights ``[d+1, k]``.

        ``xw [r, d]`` are the distinct whitened rows (``xs P``, see :meth:`fit`), ``counts [r]``
        how many tokens share each, ``pos [r, k]`` how many of those are active, ``n`` the
        tokens. Minimises ``Σ_j [Σ_i s_ij ℓ(z_ij, y_ij) + ||w_j||²/(2C)] / n`` (scikit-learn's
        objective divided by ``C·n``: same minimiser, gradients of O(1)), where
        ``||w||² = Σ_k penalty_k u_k²`` in whitened coordinates, and returns ``u``.

        Loss and gradient are written out instead of taken by autograd: with per-row weights
        ``a`` (active) and ``b`` (inactive), ``Σ a·softplus(-z) + b·softplus(z) =
        Σ t·softplus(-z) + b·z`` with ``t = a + b``, and ``dz = b - t·sigmoid(-z)``; that is
        a third of autograd's elementwise passes, which cost as much as the matrix products.
        """
        r, d = xw.shape
        n_pos = pos.sum(0)
        # scikit-learn "balanced": weight n / (2 · count of the sample's class). Per distinct
        # row: b = weight of its inactive tokens, t = weight of all of them (pos is ours).
        b = (counts[:, None] - pos).mul_(n / (2 * (n - n_pos)))
        t = pos.mul_(n / (2 * n_pos)).add_(b)
        del pos
        u = torch.zeros(d + 1, t.shape[1], device=xw.device)
        u.grad = torch.zeros_like(u)
        opt = torch.optim.LBFGS(
            [u],
            lr=1.0,
            max_iter=self.max_iter,
            history_size=20,
            tolerance_grad=1e-6,
            tolerance_change=1e-10,
            line_search_fn="strong_wolfe",
        )
        lam = penalty[:, None] / self.C
        f64 = torch.float64

        @torch.no_grad()
        def closure() -> torch.Tensor:
            grad = u.grad
            assert grad is not None
            ridge = lam * u[:-1]
            grad[:-1] = ridge  # the penalty's gradient; the data's is added by blocks
            grad[-1].zero_()
            # Summed in float64: L-BFGS compares losses of a whole chunk of features, and a
            # float32 sum would hide one feature's last improvements in its rounding.
            loss = 0.5 * (ridge * u[:-1]).sum(dtype=f64)
            # By blocks of rows, so the [rows, features] temporaries stay bounded.
            for rows in row_chunks(r, self.chunk_size):
                z = torch.addmm(u[-1], xw[rows], u[:-1])
                loss += (t[rows] * torch.nn.functional.softplus(-z)).sum(dtype=f64)
                loss += (b[rows] * z).sum(dtype=f64)
                dz = torch.sigmoid(z.neg_()).mul_(t[rows]).neg_().add_(b[rows])
                grad[:-1].addmm_(xw[rows].T, dz)
                grad[-1] += dz.sum(0)
            grad.div_(n)
            return loss / n

        opt.step(closure)
        return u.detach()

    def evaluate(
        self,
        X: ArrayLike,
        F: ArrayLike | Callable[[int, int], Any],
        *,
        n_features: int | None = None,
    ) -> ProbeResults:
        """Held-out R², balanced accuracy and AUROC of every feature."""
        self._check_fitted()
        dev = resolve_device(self.device)
        x = load_rows(X, dev, self.chunk_size)
        n, d = x.shape
        if d != self.n_features_in_:
            raise CrosslayerError(
                f"X has {d} dimensions, the probes were fitted on {self.n_features_in_}",
                "pass the same source hook",
            )
        cols = _Columns(F, n, n_features)
        m = len(self.n_active_)
        if cols.m != m:
            raise CrosslayerError(
                f"F has {cols.m} features, the probes were fitted on {m}",
                "pass the same SAE's features",
            )
        xs = self._standardise(x)
        r2, bacc, auc = (np.full(m, np.nan) for _ in range(3))
        n_act_h = np.zeros(m, dtype=np.int64)
        status = self.status_.copy()
        for j0 in range(0, m, self.feature_chunk):
            j1 = min(j0 + self.feature_chunk, m)
            f = cols.block(j0, j1, n, dev)
            pred = torch.addmm(
                self._t(self.ridge_intercept_[j0:j1], dev),
                xs,
                self._t(self.ridge_coef_[j0:j1], dev).T,
            )
            acc = RegressionAccumulator(dev)
            acc.update(f, pred)
            r2[j0:j1] = acc.result().r2_per_dim
            lab = (f > self.threshold).cpu().numpy()
            n_act_h[j0:j1] = lab.sum(0)
            ok = np.isfinite(self.logit_intercept_[j0:j1]) & (lab.any(0)) & (~lab.all(0))
            for j in np.nonzero(np.isfinite(self.logit_intercept_[j0:j1]) & ~ok)[0]:
                status[j0 + j] = ONE_CLASS_HELDOUT
            if not ok.any():
                continue
            z = (
                torch.addmm(
                    self._t(self.logit_intercept_[j0:j1][ok], dev),
                    xs,
                    self._t(self.logit_coef_[j0:j1][ok], dev).T,
                )
                .cpu()
                .numpy()
            )
            bacc[j0:j1][ok], auc[j0:j1][ok] = (
                _balanced_accuracy(z, lab[:, ok]),
                _auroc(z, lab[:, ok]),
            )
        r2[self.n_active_ == 0] = np.nan  # a dead feature has no probe worth scoring
        return ProbeResults(
            r2, bacc, auc, self.density_.copy(), self.n_active_.copy(), n_act_h, status
        )

    def score(self, X: ArrayLike, F: ArrayLike) -> float:
        """Mean held-out balanced accuracy over the features where it is defined."""
        return float(np.nanmean(self.evaluate(X, F).balanced_accuracy))

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean_.float()) / self.scale_.float()

    @staticmethod
    def _t(a: np.ndarray, dev: torch.device) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32, device=dev)

    def _check_fitted(self) -> None:
        if not hasattr(self, "status_"):
            raise CrosslayerError("these FeatureProbes are not fitted yet", "call fit(X, F) first")

    def _check_params(self) -> None:
        chunks = (self.feature_chunk, self.target_chunk, self.chunk_size)
        if not (self.alpha >= 0 and self.C > 0 and self.max_iter >= 1 and min(chunks) >= 1):
            raise CrosslayerError(
                f"bad probe settings alpha={self.alpha}, C={self.C}, max_iter={self.max_iter}, "
                f"feature_chunk={self.feature_chunk}, target_chunk={self.target_chunk}, "
                f"chunk_size={self.chunk_size}",
                "use alpha >= 0, C > 0, max_iter >= 1 and chunk sizes >= 1",
            )


class _DistinctRows:
    """The distinct rows of ``X [n, d]`` (standardised) and sums of per-token values over each.

    Rows are grouped by a random float64 projection, computed by row chunks, then checked
    chunk by chunk for exact equality with their group's first row. If few rows repeat, or
    the check fails (a hash collision), every row is its own group and X is read whole.
    """

    def __init__(
        self,
        X: ArrayLike,
        n: int,
        dev: torch.device,
        chunk_size: int,
        standardise: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.index: torch.Tensor | None = None
        g = torch.Generator(device="cpu").manual_seed(0)
        proj: torch.Tensor | None = None
        hashes = []
        for r in row_chunks(n, chunk_size):
            x = as_tensor(X[r], dev)
            if proj is None:
                proj = torch.randn(x.shape[1], generator=g, dtype=torch.float64).to(dev)
            hashes.append(x.double() @ proj)
        keys, index, counts = torch.unique(
            torch.cat(hashes), return_inverse=True, return_counts=True
        )
        if len(keys) <= 0.8 * n:
            first = torch.full((len(keys),), n, dtype=torch.long, device=dev)
            first.scatter_reduce_(0, index, torch.arange(n, device=dev), "amin")
            rep = as_tensor(X[first.cpu().numpy()], dev)
            if all(
                torch.equal(as_tensor(X[r], dev), rep[index[r]]) for r in row_chunks(n, chunk_size)
            ):
                self.index, self.x, self.counts = index, standardise(rep), counts.float()
                return
        self.x = standardise(load_rows(X, dev, chunk_size))
        self.counts = torch.ones(n, device=dev)

    def sum(self, v: torch.Tensor) -> torch.Tensor:
        """Per-token values ``v [n, k]`` summed over each distinct row: ``[r, k]``."""
        if self.index is None:
            return v
        out = torch.zeros(len(self.x), v.shape[1], dtype=v.dtype, device=v.device)
        return out.index_add_(0, self.index, v)


def _balanced_accuracy(z: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Per column: mean of the recall of each class, predicting active where ``z > 0``."""
    pred = z > 0
    tpr = (pred & lab).sum(0) / lab.sum(0)
    tnr = (~pred & ~lab).sum(0) / (~lab).sum(0)
    return 0.5 * (tpr + tnr)


def _auroc(z: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Per column AUROC via the Mann-Whitney U statistic (average ranks for ties)."""
    ranks = rankdata(z, axis=0)
    n_pos = lab.sum(0)
    n_neg = lab.shape[0] - n_pos
    u = (ranks * lab).sum(0) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def study_protocol_probe(
    X: ArrayLike,
    f: ArrayLike,
    *,
    threshold: float = 0.1,
    seed: int = 0,
    test_size: float = 0.2,
    max_iter: int = 1000,
    blas_threads: int | None = 1,
) -> dict[str, float]:
    """Seed study A's probe for one feature, with scikit-learn, for comparison.

    Active = ``f > threshold``; ``k = min(#active, #inactive)`` tokens of each class are drawn
    (seeded); 80/20 split; ``LogisticRegression`` on raw X; plain accuracy on the 20 %.
    Returns NaN accuracy when a class is empty.

    ``blas_threads``: threads of numpy's and scipy's OpenBLAS during the fit (None: as they
    are). scikit-learn's lbfgs alternates small calls between the two libraries, each with
    its own thread pool; on 2 cores their waiting threads contend, and a fit took 16x longer
    on 2 threads than on 1 (benchmarks/results/probes.md).
    """
    x = np.asarray(X, dtype=np.float32)
    lab = np.asarray(f).reshape(-1) > threshold
    if x.ndim != 2 or len(x) != len(lab):
        raise CrosslayerError(
            f"X {x.shape} and f {np.shape(f)} do not match",
            "pass X [n, d] and one feature's activations [n]",
        )
    rng = np.random.default_rng(seed)
    pos, neg = np.nonzero(lab)[0], np.nonzero(~lab)[0]
    k = min(len(pos), len(neg))
    if k < 2:
        return {"accuracy": float("nan"), "n_per_class": float(k)}
    idx = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, k, replace=False)])
    rng.shuffle(idx)
    n_test = max(1, round(test_size * len(idx)))
    test, train = idx[:n_test], idx[n_test:]
    with threadpool_limits(limits=blas_threads, user_api="blas"):
        clf = LogisticRegression(max_iter=max_iter).fit(x[train], lab[train])
    return {"accuracy": float(clf.score(x[test], lab[test])), "n_per_class": float(k)}
