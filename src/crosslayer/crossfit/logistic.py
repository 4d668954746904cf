"""Cross-fitted logistic probes: per-feature C by grouped inner CV, converged per feature.

A feature is *active* on a token when its activation is ``> threshold``. For each outer fold
``k`` and feature ``j`` the probe is scikit-learn's ``LogisticRegression(C=C_kj,
class_weight="balanced")`` on X standardised with the training folds ``T_k``' mean and std,
fitted on ``T_k``. ``C_kj`` is what ``LogisticRegressionCV(Cs, cv=<leave one training fold
out>, class_weight="balanced", scoring=<class-balanced log loss>)`` picks on ``T_k``: the inner
fits use ``T_k``'s standardisation and ``T_k``'s class weights, as ``LogisticRegressionCV``
does, and C maximises the mean over inner folds of minus the validation fold's class-balanced
log loss ``½ mean_active ℓ + ½ mean_inactive ℓ``.

Each problem is solved to its own gradient tolerance by :func:`batched_lbfgs` (one problem
per column; a feature's fit does not depend on its batch), in coordinates whitened by the
eigendecomposition of ``T_k``'s covariance so that every problem is well conditioned. The
objective is scikit-learn's divided by ``C · n_train`` (same minimiser, O(1) gradients);
``tol`` bounds the max-abs gradient of that objective in the whitened coordinates.

Out of fold: the decision threshold of fold ``k`` maximises the balanced accuracy on ``T_k``'s
own tokens; fold ``k``'s tokens are scored as ``z - threshold_k`` and the pooled scores give
the balanced accuracy (``> 0`` = active) and AUROC.

Tokens with identical X rows inside one fold are merged with their counts (per feature: how
many are active) before fitting: exact, and ~6x fewer rows for token embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator

from crosslayer.crossfit.folds import check_folds
from crosslayer.crossfit.lbfgs import LBFGSResult, batched_lbfgs
from crosslayer.crossfit.ranks import auroc
from crosslayer.crossfit.ridge import DEFAULT_ALPHAS, CrossFitRidge
from crosslayer.crossfit.stats import F64, FoldLayout, check_targets, load_sorted
from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError
from crosslayer.linalg.ridge import eigh_psd
from crosslayer.metrics import ArrayLike, check_2d, colsum, row_chunks

DEFAULT_CS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)


class _FoldRows:
    """Distinct X rows, the map input row -> distinct row, and tokens per distinct row.

    ``counts``: tokens behind each input row (default one each), so that the distinct rows of
    several folds' distinct rows (a training set) can be merged again."""

    def __init__(self, x: torch.Tensor, merge: bool, counts: torch.Tensor | None = None) -> None:
        self.index: torch.Tensor | None = None
        ones = torch.ones(len(x), dtype=x.dtype, device=x.device)
        self.x, self.counts = x, ones if counts is None else counts
        if not merge or len(x) < 2:
            return
        g = torch.Generator(device="cpu").manual_seed(0)
        proj = torch.randn(x.shape[1], generator=g, dtype=F64).to(x.device)
        _, index, counts = torch.unique(x.double() @ proj, return_inverse=True, return_counts=True)
        if len(counts) > 0.8 * len(x):
            return  # too few repeats to be worth it
        first = torch.full((len(counts),), len(x), dtype=torch.long, device=x.device)
        first.scatter_reduce_(0, index, torch.arange(len(x), device=x.device), "amin")
        rep = x[first]
        if torch.equal(rep[index], x):  # a hash collision would merge different rows
            self.index, self.x = index, rep
            self.counts = self.sum(self.counts[:, None])[:, 0]

    def sum(self, v: torch.Tensor) -> torch.Tensor:
        """Per-token values ``[n_f, c]`` summed over each distinct row: ``[r_f, c]``."""
        if self.index is None:
            return v
        out = torch.zeros(len(self.x), v.shape[1], dtype=v.dtype, device=v.device)
        return out.index_add_(0, self.index, v)


class _Basis:
    """Training set ``T``'s standardisation and whitening: ``xw = ((x - μ)/σ) P``."""

    def __init__(self, rows: list[_FoldRows]) -> None:
        x = torch.cat([r.x for r in rows]).double()
        c = torch.cat([r.counts for r in rows]).double()
        self.n = float(c.sum())
        self.mean = (c @ x) / self.n
        xc = x - self.mean
        var = (c @ xc.square()) / self.n
        scale = var.sqrt()
        self.scale = torch.where(scale > 1e-12 * scale.max(), scale, torch.ones_like(scale))
        xs = xc / self.scale
        evals, V = eigh_psd((xs * c[:, None]).T @ xs / self.n)
        # The floor keeps null directions (constant or collinear inputs) finite.
        lam = evals + 1e-3 * float(evals.mean())
        self.P = V * lam.rsqrt()  # w = P u on standardised X
        self.P_inv = (V * lam.sqrt()).T  # u = P⁻¹ w
        self.penalty = 1.0 / lam  # ||w||² = Σ_k u_k² / lam_k

    def whiten(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # standardised in float64 (Gemma's huge-mean dimensions), rotated in ``dtype``: a
        # float32 fit has float32 rows anyway, and the float64 product was ~10% of its time
        xs = ((x.double() - self.mean) / self.scale).to(dtype)
        return xs @ self.P.to(dtype)

    def to_raw(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whitened parameters ``u [d+1, c]`` as raw-X coefficients ``β [d, c]`` and intercepts."""
        beta = (self.P @ u[:-1].double()) / self.scale[:, None]
        return beta, u[-1].double() - self.mean @ beta

    def from_raw(self, beta: torch.Tensor, b0: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The inverse of :meth:`to_raw` in this basis: the same linear function of X."""
        u = torch.empty(beta.shape[0] + 1, beta.shape[1], dtype=F64, device=beta.device)
        u[:-1] = self.P_inv @ (beta * self.scale[:, None])
        u[-1] = b0 + self.mean @ beta
        return u.to(dtype)


def _merged_weights(
    union: _FoldRows, weights: dict[int, tuple[torch.Tensor, torch.Tensor]], folds: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The folds' per-row class weights ``(t, b)`` summed onto their union's distinct rows
    (``union`` was made from those folds' rows, in this order)."""
    t = torch.cat([weights[i][0] for i in folds])
    b = torch.cat([weights[i][1] for i in folds])
    return union.sum(t), union.sum(b)


@dataclass
class _Prepared:
    """What every block of features shares: folds, distinct rows, bases, whitened rows."""

    lay: FoldLayout
    rows: list[_FoldRows]  # each fold's distinct rows
    unions: list[_FoldRows]  # each outer training set's distinct rows
    bases: list[_Basis]  # each outer training set's standardisation and whitening
    inner_rows: dict[tuple[int, int], _FoldRows]  # the inner CV's training sets (C_rule cv)
    xw_union: list[torch.Tensor]  # unions[k] whitened in bases[k]
    xw_fold: list[torch.Tensor]  # fold k's rows whitened in bases[k] (to predict it)


class CrossFitLogistic(BaseEstimator):
    """Out-of-fold, class-balanced L2 logistic probes for every feature.

    Parameters
    ----------
    Cs: inverse L2 strengths searched by grouped inner CV (one value: used as given).
    C_rule: ``"cv"`` (the grouped inner CV over ``Cs``) or ``"ridge"``: ``C_kj = 4 / (α_kj
        n_k)`` from the alpha that :class:`CrossFitRidge`'s grouped inner CV picks (over
        ``rule_alphas``) for the feature's 0/1 labels on ``T_k`` (``n_k`` tokens). The two
        objectives share their curvature at the null (the logistic's is 1/4 of the linear
        probability model's), so the rule carries the CV's choice of strength over at the
        cost of one ridge fit; ``docs/metrics.md`` shows it against the CV on real features.
    threshold: a feature is active where its activation is ``> threshold``.
    tol: per-feature stop on the max-abs gradient (see the module docstring).
    inner_tol: the same for the inner-CV fits, which only rank the Cs (default: ``tol``;
        a looser value makes the search cheaper).
    max_iter: L-BFGS iterations per problem; problems that stop earlier without reaching
        ``tol`` are counted in ``n_not_converged_``.
    decision: ``"train"`` (threshold maximising training balanced accuracy) or ``"zero"``.
    merge_rows: merge identical X rows within each fold (exact).
    precondition: start L-BFGS from each problem's Hessian diagonal at ``z = 0`` (speed only).
    warm_start: start fold ``k``'s fit of a feature from its fit on the previous fold, carried
        into fold ``k``'s basis as the same linear function of X (the training sets share all
        but two folds, so the start is close). Every fit still stops at ``tol`` and a
        feature's start depends on nothing but its own earlier fit, but a different start
        stops at a different point within ``tol``: on 300 real features at ``tol=1e-4`` it
        saved 23% of the iterations and moved balanced accuracy by up to 0.008 (median
        1e-4), the tolerance's own scale, so it is off by default
        (benchmarks/results/crossfit_real.md).
    feature_chunk: features solved together (memory and speed only).
    dtype: ``"float32"`` (fast) or ``"float64"`` for the rows, products and parameters.

    Learned (``K`` folds, ``m`` features): ``C_ [K, m]``, ``cv_loss_ [K, n_Cs, m]`` (mean inner
    validation balanced log loss), ``coef_ [K, m, d]`` and ``intercept_ [K, m]`` on X
    standardised by ``x_mean_``, ``x_scale_ [K, d]``, ``threshold_ [K, m]`` (decision
    threshold on the logit), ``converged_ [K, m]`` and ``n_iter_ [K, m]`` of the outer fits,
    ``n_not_converged_`` (all fits, inner included), ``fitted_ [K, m]`` (both classes in
    ``T_k``), ``balanced_accuracy_ [m]``, ``auroc_ [m]`` (pooled out-of-fold; NaN unless
    fitted in every fold and both classes occur), ``n_pos_train_ [K, m]``,
    ``n_pos_ [m]`` (active tokens, all folds).
    """

    def __init__(
        self,
        Cs: tuple[float, ...] = DEFAULT_CS,
        C_rule: str = "cv",
        rule_alphas: tuple[float, ...] = DEFAULT_ALPHAS,
        threshold: float = 0.0,
        tol: float = 1e-5,
        inner_tol: float | None = None,
        max_iter: int = 500,
        history: int = 10,
        decision: str = "train",
        merge_rows: bool = True,
        precondition: bool = True,
        warm_start: bool = False,
        feature_chunk: int = 512,
        chunk_size: int = 4096,
        dtype: str = "float32",
        device: str | None = None,
    ) -> None:
        self.Cs = Cs
        self.C_rule = C_rule
        self.rule_alphas = rule_alphas
        self.threshold = threshold
        self.tol = tol
        self.inner_tol = inner_tol
        self.max_iter = max_iter
        self.history = history
        self.decision = decision
        self.merge_rows = merge_rows
        self.precondition = precondition
        self.warm_start = warm_start
        self.feature_chunk = feature_chunk
        self.chunk_size = chunk_size
        self.dtype = dtype
        self.device = device

    def fit(
        self,
        X: ArrayLike,
        F: ArrayLike,
        fold_ids: ArrayLike,
        *,
        label_alpha: np.ndarray | None = None,
    ) -> CrossFitLogistic:
        """Fit and score every feature out of fold; ``fold_ids [n]`` from ``grouped_folds``.

        ``label_alpha [K, m]``: with ``C_rule="ridge"``, the alphas a :class:`CrossFitRidge`
        fit of the 0/1 labels on the same X and folds chose, when the caller has them (study A
        fits the features and their labels in one ridge pass); otherwise the rule fits it."""
        Cs = np.sort(np.asarray(self.Cs, dtype=np.float64))
        self._check_params(Cs)
        self.rule_C_ = None
        if self.C_rule == "ridge":
            self.rule_C_ = self._rule_C(X, F, fold_ids, label_alpha)
            Cs = Cs[:1]  # unused: every fit takes its C from the rule
        dev = resolve_device(self.device)
        dt = torch.float64 if self.dtype == "float64" else torch.float32
        n, d = check_2d("X", X)
        m = check_targets(F, n)
        folds, K = check_folds(fold_ids, n)
        lay = FoldLayout.from_ids(folds, K)
        x = load_sorted(X, lay.order, dev, self.chunk_size)
        rows = [_FoldRows(x[lay.rows(k)], self.merge_rows) for k in range(K)]
        # Each training set's distinct rows: a token seen in several of its folds is one row
        # of the outer fit (a third fewer rows than the folds' own for token embeddings).
        unions = [self._union([rows[i] for i in range(K) if i != k]) for k in range(K)]
        bases = [_Basis([u]) for u in unions]
        # The inner CV's training sets T_k \ {i}: the same set for (k, i) and (i, k).
        inner_rows: dict[tuple[int, int], _FoldRows] = {}
        if self.C_rule == "cv" and len(Cs) > 1:
            inner_rows = {
                (a, b): self._union([rows[i] for i in range(K) if i not in (a, b)])
                for a in range(K)
                for b in range(a + 1, K)
            }
        # Whitened once for every block of features: each outer fit's rows and the rows of
        # the fold it predicts (the whitening is a d x d product per row).
        prep = _Prepared(
            lay,
            rows,
            unions,
            bases,
            inner_rows,
            [bases[k].whiten(unions[k].x, dt) for k in range(K)],
            [bases[k].whiten(x[lay.rows(k)], dt) for k in range(K)],
        )
        del x
        self._allocate(K, m, d, len(Cs))
        self.n_not_converged_ = 0
        for j0 in range(0, m, self.feature_chunk):
            j1 = min(j0 + self.feature_chunk, m)
            lab = (lay.targets(F, j0, j1, dev) > self.threshold).to(dt)
            pos = [rows[k].sum(lab[lay.rows(k)]) for k in range(K)]  # active tokens per row
            self._fit_chunk(prep, pos, lab, Cs, j0, j1, dt)
        self.x_mean_ = np.stack([b.mean.cpu().numpy() for b in bases])
        self.x_scale_ = np.stack([b.scale.cpu().numpy() for b in bases])
        self.fold_ids_, self.Cs_ = folds, Cs
        self.n_features_in_ = d
        return self

    def score(self, X: ArrayLike | None = None, F: ArrayLike | None = None) -> float:
        """Mean out-of-fold balanced accuracy over the features where it is defined."""
        return float(np.nanmean(self.balanced_accuracy_))

    def _allocate(self, K: int, m: int, d: int, n_cs: int) -> None:
        self.C_ = np.full((K, m), np.nan)
        self.cv_loss_ = np.full((K, n_cs, m), np.nan)
        self.coef_ = np.full((K, m, d), np.nan, dtype=np.float32)
        self.intercept_ = np.full((K, m), np.nan)
        self.threshold_ = np.full((K, m), np.nan)
        self.converged_ = np.zeros((K, m), dtype=bool)
        self.n_iter_ = np.zeros((K, m), dtype=np.int64)
        self.fitted_ = np.zeros((K, m), dtype=bool)
        self.n_pos_train_ = np.zeros((K, m), dtype=np.int64)
        self.n_pos_ = np.zeros(m, dtype=np.int64)
        self.balanced_accuracy_ = np.full(m, np.nan)
        self.auroc_ = np.full(m, np.nan)

    def _fit_chunk(
        self,
        prep: _Prepared,
        pos: list[torch.Tensor],
        lab: torch.Tensor,
        Cs: np.ndarray,
        j0: int,
        j1: int,
        dt: torch.dtype,
    ) -> None:
        lay, rows, unions, bases = prep.lay, prep.rows, prep.unions, prep.bases
        K, c = lay.n_folds, j1 - j0
        dev = lab.device
        n_pos_fold = torch.stack([p.sum(0, dtype=F64) for p in pos])  # [K, c]
        n_fold = torch.tensor([float(r.counts.sum()) for r in rows], dtype=F64, device=dev)
        self.n_pos_[j0:j1] = n_pos_fold.sum(0).round().long().cpu().numpy()
        z_oof = torch.full((len(lab), c), float("nan"), dtype=dt, device=dev)
        # The latest fit of each feature as a function of raw X (warm starts).
        beta = torch.zeros(bases[0].P.shape[0], c, dtype=F64, device=dev)
        b0 = torch.zeros(c, dtype=F64, device=dev)
        seen = torch.zeros(c, dtype=torch.bool, device=dev)
        for k in range(K):
            train = [i for i in range(K) if i != k]
            P = n_pos_fold[train].sum(0)
            N = float(n_fold[train].sum()) - P
            self.n_pos_train_[k, j0:j1] = P.round().long().cpu().numpy()
            ok = ((P > 0) & (N > 0)).nonzero().squeeze(1)
            if ok.numel() == 0:
                continue
            # scikit-learn "balanced", computed once on T_k as LogisticRegressionCV does.
            n_t = float(n_fold[train].sum())
            w_pos, w_neg = (n_t / (2 * P[ok])).to(dt), (n_t / (2 * N[ok])).to(dt)
            basis = bases[k]
            weights = {i: self._weights(rows[i], pos[i][:, ok], w_pos, w_neg) for i in train}
            penalty = basis.penalty.to(dt)
            if self.rule_C_ is not None:
                rule = self.rule_C_[k, (j0 + ok).cpu().numpy()]
                c_sel = torch.as_tensor(rule, dtype=dt, device=dev)
                u0 = self._start(basis, beta, b0, seen, ok, dt)
            elif len(Cs) > 1:
                xw = {i: basis.whiten(rows[i].x, dt) for i in train}
                c_sel, u0 = self._inner_cv(
                    basis, xw, weights, penalty, train, ok, Cs, k, j0, prep.inner_rows
                )
            else:
                c_sel = torch.full((ok.numel(),), Cs[0], dtype=dt, device=dev)
                u0 = self._start(basis, beta, b0, seen, ok, dt)
            # The outer fit and its threshold on the training set's distinct rows (key -1).
            xw = {-1: prep.xw_union[k]}
            weights = {-1: _merged_weights(unions[k], weights, train)}
            train = [-1]
            res = self._solve(xw, weights, train, penalty, c_sel, u0, self.tol)
            beta[:, ok], b0[ok] = basis.to_raw(res.u)
            seen[ok] = True
            cols = (j0 + ok).cpu().numpy()
            self.fitted_[k, cols] = True
            self.C_[k, cols] = c_sel.double().cpu().numpy()
            self.converged_[k, cols] = res.converged.cpu().numpy()
            self.n_iter_[k, cols] = res.n_iter.cpu().numpy()
            u = res.u
            w = basis.P.to(dt) @ u[:-1]  # coefficients on standardised X
            self.coef_[k, cols] = w.T.float().cpu().numpy()
            self.intercept_[k, cols] = u[-1].double().cpu().numpy()
            thr = self._decision_threshold(xw, weights, train, u)
            self.threshold_[k, cols] = thr.double().cpu().numpy()
            zk = torch.addmm(u[-1], prep.xw_fold[k], u[:-1])
            z_oof[lay.rows(k), ok] = zk - thr
        # Pooled out-of-fold metrics for features fitted in every fold.
        full = torch.as_tensor(self.fitted_[:, j0:j1].all(0), device=dev)
        n_pos = lab.sum(0)
        full &= (n_pos > 0) & (n_pos < len(lab))
        idx = full.nonzero().squeeze(1)
        if idx.numel():
            every = idx.numel() == c
            z = z_oof if every else z_oof[:, idx]
            y = lab > 0 if every else lab[:, idx] > 0
            # integer counts (torch's float64 casting sum is its slow path)
            tpr = ((z > 0) & y).sum(0).double() / y.sum(0).double()
            tnr = ((z <= 0) & ~y).sum(0).double() / (~y).sum(0).double()
            out = (j0 + idx).cpu().numpy()
            self.balanced_accuracy_[out] = (0.5 * (tpr + tnr)).cpu().numpy()
            self.auroc_[out] = auroc(z, y).cpu().numpy()

    def _union(self, parts: list[_FoldRows]) -> _FoldRows:
        """The distinct rows of several folds' distinct rows, tokens per row summed."""
        x = torch.cat([p.x for p in parts])
        return _FoldRows(x, self.merge_rows, torch.cat([p.counts for p in parts]))

    def _start(
        self,
        basis: _Basis,
        beta: torch.Tensor,
        b0: torch.Tensor,
        seen: torch.Tensor,
        ok: torch.Tensor,
        dt: torch.dtype,
    ) -> torch.Tensor:
        """The outer fit's starting point: zero, or the feature's previous fold's fit."""
        u0 = torch.zeros(basis.P.shape[0] + 1, ok.numel(), dtype=dt, device=beta.device)
        if self.warm_start:
            prev = seen[ok]
            if bool(prev.any()):
                cols = ok[prev]
                u0[:, prev] = basis.from_raw(beta[:, cols], b0[cols], dt)
        return u0

    def _rule_C(
        self, X: ArrayLike, F: ArrayLike, fold_ids: ArrayLike, given: np.ndarray | None
    ) -> np.ndarray:
        """``[K, m]`` C from the ridge alpha chosen for each feature's 0/1 labels."""
        folds, K = check_folds(fold_ids, len(np.asarray(fold_ids).reshape(-1)))
        if given is None:
            ridge = CrossFitRidge(alphas=self.rule_alphas, device=self.device)
            given = ridge.fit(X, _Active(F, self.threshold), fold_ids).alpha_
        given = np.asarray(given, dtype=np.float64)
        if given.shape != (K, F.shape[1]):
            raise CrosslayerError(
                f"label_alpha has shape {given.shape}, expected {(K, F.shape[1])}",
                "pass CrossFitRidge(...).fit(X, labels, fold_ids).alpha_ of the same folds",
            )
        n_train = (len(folds) - np.bincount(folds, minlength=K)).astype(np.float64)
        alpha = np.maximum(given, 1e-12)  # alpha 0 (no penalty) -> a very large C
        self.rule_alpha_ = given
        return np.clip(4.0 / (alpha * n_train[:, None]), 1e-8, 1e8)

    @staticmethod
    def _weights(
        r: _FoldRows, pos: torch.Tensor, w_pos: torch.Tensor, w_neg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per distinct row: ``t`` = total class weight, ``b`` = weight of its inactive tokens."""
        b = (r.counts.to(pos.dtype)[:, None] - pos) * w_neg
        return pos * w_pos + b, b

    def _inner_cv(
        self,
        basis: _Basis,
        xw: dict[int, torch.Tensor],
        weights: dict[int, tuple[torch.Tensor, torch.Tensor]],
        penalty: torch.Tensor,
        train: list[int],
        ok: torch.Tensor,
        Cs: np.ndarray,
        k: int,
        j0: int,
        inner_rows: dict[tuple[int, int], _FoldRows],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Leave one training fold out for every C (ascending, warm-started along the path).

        Each inner fit runs on its training set's distinct rows (``inner_rows``: a token
        seen in several of its folds is one row), as the outer fit does; ``xw`` holds each
        training fold's own rows for the validation losses.

        Returns the chosen C per feature and a warm start for the outer fit (the last inner
        fold's solution at that C)."""
        dt = penalty.dtype
        p, c = xw[train[0]].shape[1] + 1, ok.numel()
        loss = torch.zeros(len(Cs), c, dtype=F64, device=penalty.device)
        last = torch.zeros(len(Cs), p, c, dtype=dt, device=penalty.device)
        tol = self.tol if self.inner_tol is None else self.inner_tol
        for i in train:
            inner = [t for t in train if t != i]
            rows = inner_rows[(min(k, i), max(k, i))]
            fit_x = {-1: basis.whiten(rows.x, dt)}
            fit_w = {-1: _merged_weights(rows, weights, inner)}
            # Warm starts: along the path from the previous C, and the first C of each inner
            # fold from the previous fold's (the training sets overlap in all but one fold).
            u = last[0].clone()
            for a, C in enumerate(Cs):
                cc = torch.full((c,), C, dtype=dt, device=u.device)
                res = self._solve(fit_x, fit_w, [-1], penalty, cc, u, tol)
                u = res.u
                last[a] = u
                loss[a] += self._balanced_log_loss(xw[i], weights[i], u)
        loss /= len(train)
        best = loss.argmin(0)  # first minimum: the strongest penalty among ties
        self.cv_loss_[k][:, (j0 + ok).cpu().numpy()] = loss.cpu().numpy()
        sel = torch.as_tensor(Cs, dtype=dt, device=penalty.device)[best]
        return sel, last[best, :, torch.arange(c)].T.contiguous()

    @staticmethod
    def _balanced_log_loss(
        xw: torch.Tensor, w: tuple[torch.Tensor, torch.Tensor], u: torch.Tensor
    ) -> torch.Tensor:
        """Validation ``½ mean_active ℓ + ½ mean_inactive ℓ`` (one class only: its mean)."""
        t, b = w
        a = t - b  # weights are proportional to counts within a class, so means are ratios
        z = torch.addmm(u[-1], xw, u[:-1])
        lp = colsum(a * torch.nn.functional.softplus(-z))
        ln = colsum(b * torch.nn.functional.softplus(z))
        sa, sb = colsum(a), colsum(b)
        mp = torch.where(sa > 0, lp / sa.clamp(min=1e-300), torch.nan)
        mn = torch.where(sb > 0, ln / sb.clamp(min=1e-300), torch.nan)
        return torch.nanmean(torch.stack([mp, mn]), 0)

    def _solve(
        self,
        xw: dict[int, torch.Tensor],
        weights: dict[int, tuple[torch.Tensor, torch.Tensor]],
        folds: list[int],
        penalty: torch.Tensor,
        C: torch.Tensor,
        u0: torch.Tensor,
        tol: float,
    ) -> LBFGSResult:
        """Class-balanced L2 logistic regression on the rows of ``folds``, one per column.

        Minimises ``(1/n) Σ_i [t_i softplus(-z_i) + b_i z_i] + Σ_k u_k² penalty_k / (2 C n)``
        with ``z = xw u + u_0`` (``t`` total and ``b`` inactive class weight of row ``i``;
        ``a softplus(-z) + b softplus(z) = t softplus(-z) + b z``), ``n`` the tokens.
        """
        xs = torch.cat([xw[i] for i in folds])
        t_all = torch.cat([weights[i][0] for i in folds])
        b_all = torch.cat([weights[i][1] for i in folds])
        # Class weights sum to the token count on T_k (n/2 per class); on an inner subset the
        # sum differs per feature, so each column is normalised by its own.
        norm = colsum(t_all).to(xs.dtype)
        lam = penalty[:, None] / C.to(xs.dtype)[None, :].to(penalty.device)
        r = len(xs)

        def evaluate(u: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            every = cols.numel() == t_all.shape[1]
            tc = t_all if every else t_all[:, cols]
            bc = b_all if every else b_all[:, cols]
            nc, lc = norm[cols], lam[:, cols]
            grad = torch.empty_like(u)
            ridge = lc * u[:-1]
            grad[:-1] = ridge
            grad[-1].zero_()
            loss = 0.5 * colsum(ridge * u[:-1])
            gdata = torch.zeros(u.shape, dtype=F64, device=u.device)
            ldata = torch.zeros(u.shape[1], dtype=F64, device=u.device)
            for rr in row_chunks(r, self.chunk_size):
                z = torch.addmm(u[-1], xs[rr], u[:-1])
                per_row = torch.nn.functional.softplus(-z).mul_(tc[rr]).addcmul_(bc[rr], z)
                ldata += colsum(per_row)
                dz = torch.sigmoid(z.neg_()).mul_(tc[rr]).neg_().add_(bc[rr])
                # float64 between row blocks: at the optimum the gradient is a small
                # difference of large sums, and float32 accumulation would set its floor.
                gdata[:-1] += (xs[rr].T @ dz).double()
                gdata[-1] += colsum(dz)
            # Per column: data term over its own normaliser, penalty over (C · normaliser).
            grad = ((gdata + grad.double()) / nc.double()).to(u.dtype)
            return (ldata + loss) / nc.double(), grad

        with torch.no_grad():
            # Jacobi preconditioner: the diagonal of each column's Hessian at z = 0, where
            # every sigmoid slope is 1/4 (the penalty's curvature spans the whitened basis'
            # eigenvalue range, which is what slows plain L-BFGS down).
            D = None
            if self.precondition:
                h = torch.empty_like(u0)
                h[:-1] = 0.25 * (xs.square().T @ t_all) + lam
                h[-1] = 0.25 * t_all.sum(0)
                D = norm[None, :] / h.clamp(min=1e-30)
            res = batched_lbfgs(
                evaluate,
                u0,
                tol=tol,
                max_iter=self.max_iter,
                history=self.history,
                loss_noise=1e-6 if xs.dtype == torch.float32 else 1e-12,
                precond=D,
            )
        self.n_not_converged_ += int((~res.converged).sum())
        return res

    def _decision_threshold(
        self,
        xw: dict[int, torch.Tensor],
        weights: dict[int, tuple[torch.Tensor, torch.Tensor]],
        folds: list[int],
        u: torch.Tensor,
    ) -> torch.Tensor:
        """Per feature, the logit cut that maximises balanced accuracy on the training rows."""
        if self.decision == "zero":
            return torch.zeros(u.shape[1], dtype=u.dtype, device=u.device)
        xs = torch.cat([xw[i] for i in folds])
        t = torch.cat([weights[i][0] for i in folds])
        b = torch.cat([weights[i][1] for i in folds])
        # Features as rows ([c, r]): torch sorts a contiguous last dimension ~1.6x faster.
        a = (t - b).T.contiguous()  # balanced weights: each class sums to n/2, so cum sums
        b = b.T.contiguous()  # are TPR and FPR
        z = torch.addmm(u[-1][:, None], u[:-1].T, xs.T)
        zs, order = z.sort(1, descending=True)
        tp = a.gather(1, order).cumsum(1) / a.sum(1, keepdim=True)
        fp = b.gather(1, order).cumsum(1) / b.sum(1, keepdim=True)
        ba = 0.5 * (1 + tp - fp)  # predicting active for the top i+1 rows
        # A cut is only possible between two different logits.
        ba[:, :-1][zs[:, :-1] == zs[:, 1:]] = -1.0
        best = ba.argmax(1)
        hi = zs.gather(1, best[:, None])[:, 0]
        lo = zs.gather(1, (best + 1).clamp(max=zs.shape[1] - 1)[:, None])[:, 0]
        cut = torch.where(best + 1 < zs.shape[1], 0.5 * (hi + lo), hi - 1.0)
        # Predicting nothing active (BA 0.5) is never better than the best cut above, except
        # for a useless probe, where either gives 0.5.
        return cut

    def _check_params(self, Cs: np.ndarray) -> None:
        if (
            Cs.size < 1
            or not (Cs > 0).all()
            or self.tol <= 0
            or (self.inner_tol is not None and self.inner_tol <= 0)
            or self.max_iter < 1
            or self.history < 1
            or self.feature_chunk < 1
            or self.decision not in ("train", "zero")
            or self.dtype not in ("float32", "float64")
            or self.C_rule not in ("cv", "ridge")
        ):
            raise CrosslayerError(
                f"bad logistic settings Cs={self.Cs}, tol={self.tol}, max_iter={self.max_iter}, "
                f"history={self.history}, feature_chunk={self.feature_chunk}, "
                f"decision={self.decision!r}, dtype={self.dtype!r}, C_rule={self.C_rule!r}",
                "use Cs > 0, tol > 0, max_iter/history/feature_chunk >= 1, decision 'train' "
                "or 'zero', dtype 'float32' or 'float64', C_rule 'cv' or 'ridge'",
            )


class _Active:
    """``F`` read as 0/1 labels (``> threshold``), block by block, as the estimators read F."""

    def __init__(self, F: ArrayLike, threshold: float) -> None:
        self._F, self.threshold = F, threshold
        self.shape = F.shape

    def __getitem__(self, key: object) -> np.ndarray:
        block = self._F[key]  # type: ignore[index]
        if isinstance(block, torch.Tensor):
            block = block.cpu().numpy()
        return (np.asarray(block) > self.threshold).astype(np.float32)
