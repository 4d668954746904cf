"""Cross-fitted per-feature scores against scikit-learn, and the biases they remove."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from crosslayer.compare import token_determinedness
from crosslayer.crossfit import (
    REASONS,
    CrossFitLogistic,
    CrossFitRidge,
    apply_rule,
    auroc,
    count_positives,
    grouped_folds,
    token_lookup_r2,
)
from crosslayer.crossfit.positives import DEAD, FEW_NEG_FIT, FEW_POS_FIT, FEW_POS_SCORE, OK
from crosslayer.crossfit.ranks import auroc_rows
from crosslayer.crossfit.stats import FoldTargets, SparseColumns
from crosslayer.errors import CrosslayerError
from crosslayer.linalg import PenaltyPath, sse_path_per_target


def _data(n: int, d: int, m: int, n_docs: int, seed: int):
    """Uneven-scale X with an offset, documents, and sparse features of X plus noise."""
    rng = np.random.default_rng(seed)
    docs = rng.integers(0, n_docs, n)
    x = (rng.normal(size=(n, d)) * np.linspace(0.5, 5, d) + 3).astype(np.float32)
    signal = np.linspace(0.0, 2.0, m)
    z = (x - 3) / np.linspace(0.5, 5, d) @ rng.normal(size=(d, m)) * signal
    z += rng.normal(size=(n, m)) - rng.uniform(0.5, 2.0, m)
    return x.astype(np.float64), np.where(z > 0, z, 0).astype(np.float32), docs


def _balanced_log_likelihood(est, X, y):
    """The inner-CV score: minus ½ (mean log loss of actives + mean log loss of inactives)."""
    lp = est.predict_log_proba(X)
    return 0.5 * lp[y, 1].mean() + 0.5 * lp[~y, 0].mean()


# ---------------------------------------------------------------------------- folds


def test_folds_are_by_document_cover_every_token_once_and_are_deterministic():
    rng = np.random.default_rng(0)
    docs = np.repeat(rng.permutation(300), rng.integers(1, 40, 300))
    folds = grouped_folds(docs, 5, seed=3)
    assert folds.shape == docs.shape and set(np.unique(folds)) == set(range(5))
    for doc in np.unique(docs):  # no document in two folds
        assert len(np.unique(folds[docs == doc])) == 1
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= np.bincount(docs).max()  # balanced by tokens
    np.testing.assert_array_equal(folds, grouped_folds(docs, 5, seed=3))
    assert not np.array_equal(folds, grouped_folds(docs, 5, seed=4))
    with pytest.raises(CrosslayerError, match="documents"):
        grouped_folds(np.zeros(10), 2)


# ---------------------------------------------------------------------------- ridge


def test_ridge_alpha_and_out_of_fold_predictions_equal_a_sklearn_nested_cv():
    x, f, docs = _data(700, 6, 5, 30, seed=1)
    f[:, 4] = x[:, 0] * 3 + 0.01 * f[:, 4]  # nearly exact: SSE cancels most, alpha small
    folds, K = grouped_folds(docs, 4, seed=0), 4
    alphas = (1e-5, 1e-3, 1e-2, 0.1, 1.0, 10.0)
    r = CrossFitRidge(alphas=alphas, feature_chunk=2).fit(x, f, folds)
    oof = np.zeros(f.shape)
    for k in range(K):
        T = folds != k
        for j in range(f.shape[1]):
            sst = ((f[:, j] - f[:, j].mean()) ** 2).sum()
            path = []
            for a in alphas:
                sse = 0.0
                for i in set(range(K)) - {k}:
                    tr, va = T & (folds != i), folds == i
                    sc = StandardScaler().fit(x[tr])
                    fit = Ridge(alpha=a * tr.sum()).fit(sc.transform(x[tr]), f[tr, j])
                    sse += ((fit.predict(sc.transform(x[va])) - f[va, j]) ** 2).sum()
                path.append(sse)
            # Float32 products: the SSE path agrees to ~1e-8 of the feature's variance.
            np.testing.assert_allclose(np.array(path) / sst, r.cv_sse_[k, :, j] / sst, atol=1e-6)
            best = alphas[int(np.argmin(path))]
            assert r.alpha_[k, j] == best
            sc = StandardScaler().fit(x[T])
            fit = Ridge(alpha=best * T.sum()).fit(sc.transform(x[T]), f[T, j])
            np.testing.assert_allclose(r.coef_[k, :, j], fit.coef_, atol=1e-4)
            oof[folds == k, j] = fit.predict(sc.transform(x[folds == k]))
    pred = r.predict_oof(x)
    np.testing.assert_allclose(pred, oof, atol=1e-4 * f.std())
    f64 = f.astype(np.float64)
    r2 = 1 - ((f64 - oof) ** 2).sum(0) / ((f64 - f64.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(r.r2_, r2, atol=1e-6)
    assert r.r2_[4] > 0.99 and len(np.unique(r.alpha_)) > 1  # alpha differs across features


def test_ridge_out_of_fold_auroc_and_prepared_targets():
    """``auroc_`` is roc_auc_score of the out-of-fold predictions against F > threshold; a
    FoldTargets prepared once gives every fit the same results as reading F itself."""
    x, f, docs = _data(900, 7, 6, 36, seed=3)
    f[:, 5] = 0.0  # never active: no AUROC
    f[::3, 2] = np.round(f[::3, 2], 1)  # ties in F do not matter; ties in predictions below
    x[:, 0] = np.round(x[:, 0])  # repeated X rows: tied predictions inside a fold
    folds = grouped_folds(docs, 4, seed=0)
    alphas = (1e-4, 1e-2, 1.0, 30.0)
    r = CrossFitRidge(alphas, feature_chunk=4, active_threshold=0.1).fit(x, f, folds)
    pred = r.predict_oof(x)
    for j in range(5):
        y = f[:, j] > 0.1
        assert r.auroc_[j] == pytest.approx(roc_auc_score(y, pred[:, j]), abs=1e-6)
    assert np.isnan(r.auroc_[5])
    prepared = FoldTargets(f, folds, feature_chunk=3, threshold=0.1)
    for X in (x, x[:, ::-1] * 2.0):  # two "layers" on the same prepared targets
        a = CrossFitRidge(alphas, feature_chunk=4, active_threshold=0.1).fit(X, f, folds)
        b = CrossFitRidge(alphas, feature_chunk=4, active_threshold=0.1).fit(X, prepared, folds)
        np.testing.assert_allclose(b.r2_, a.r2_, atol=1e-10)
        np.testing.assert_allclose(b.auroc_, a.auroc_, atol=1e-12, equal_nan=True)
        np.testing.assert_array_equal(b.alpha_, a.alpha_)
    with pytest.raises(CrosslayerError, match="other folds or another threshold"):
        CrossFitRidge(alphas, active_threshold=0.0).fit(x, prepared, folds)
    with pytest.raises(CrosslayerError, match="other folds or another threshold"):
        CrossFitRidge(alphas, active_threshold=0.1).fit(x, prepared, (folds + 1) % 4)


def test_sparse_features_take_the_sparse_cross_product_with_the_dense_path_s_results(
    monkeypatch: pytest.MonkeyPatch,
):
    """Blocks of F at most SPARSE_DENSITY non-zero keep per-fold CSR copies, and X'F from them
    (raw product minus the centring's rank-one term) equals the float64 product of the
    centred block; fits from them equal the dense path's."""
    import torch

    from crosslayer.crossfit import stats

    rng = np.random.default_rng(5)
    x, _, docs = _data(3000, 8, 1, 60, seed=5)
    z = (x[:, :6] - 3) / np.linspace(0.5, 5, 8)[:6] + 0.3 * rng.normal(size=(3000, 6))
    f = np.where(z > 1.75, z, 0.0).astype(np.float32)  # SAE-like: ~4% of tokens active
    folds = grouped_folds(docs, 5, seed=0)
    sparse = FoldTargets(f, folds, feature_chunk=4, threshold=0.0)
    assert all(b.sparse_t is not None for b in sparse.blocks)
    lay = sparse.layout
    xs = torch.from_numpy(x[lay.order].astype(np.float32))
    for blk in sparse.blocks:
        for k in range(5):
            r = lay.rows(k)
            sx = xs[r].double().sum(0)
            ref = x[lay.order][r].T @ (f[lay.order][r, blk.j0 : blk.j1] - blk.shift.numpy())
            got = blk.cross(xs, lay, sx, k).numpy()
            np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())
    monkeypatch.setattr(stats, "SPARSE_DENSITY", -1.0)
    dense = FoldTargets(f, folds, feature_chunk=4, threshold=0.0)
    assert all(b.sparse_t is None for b in dense.blocks)
    alphas = (1e-4, 1e-2, 1.0, 30.0)
    a = CrossFitRidge(alphas, feature_chunk=4, active_threshold=0.0).fit(x, sparse, folds)
    b = CrossFitRidge(alphas, feature_chunk=4, active_threshold=0.0).fit(x, dense, folds)
    np.testing.assert_allclose(a.r2_, b.r2_, atol=1e-6)
    np.testing.assert_allclose(a.auroc_, b.auroc_, atol=1e-6)
    np.testing.assert_array_equal(a.alpha_, b.alpha_)
    assert np.nanmin(a.r2_) > 0.05  # the features are predictable: the comparison bites


def test_auroc_rows_does_not_depend_on_the_threads():
    rng = np.random.default_rng(4)
    z = np.round(rng.normal(size=(150, 400)), 1).astype(np.float32)
    y = rng.random((150, 400)) < rng.uniform(0.01, 0.5, (150, 1))
    y[7] = False  # no positive: NaN
    want = [roc_auc_score(y[j], z[j]) if y[j].any() else np.nan for j in range(150)]
    for threads in (1, 2, 3):
        np.testing.assert_allclose(auroc_rows(z, y, threads=threads), want, atol=1e-12)


def test_float32_alpha_path_scores_as_the_float64_path():
    """The float32 inner-CV path (the emergence matrix's) changes no score beyond round-off:
    an alpha can differ only where the float64 path's errors at the two alphas tie to
    ~1e-5 of the feature's variance, and the out-of-fold R² agree."""
    x, f, docs = _data(2000, 24, 40, 60, seed=5)
    x[:, 0] *= 300.0  # an outlier dimension, as in Gemma's residual stream
    f[:, 0] = x[:, 1] * 2 + 0.05 * f[:, 0]  # well predicted: the path cancels by ~1/(1-R²)
    folds = grouped_folds(docs, 5, seed=0)
    alphas = tuple(float(a) for a in np.logspace(-6, 2, 9))
    r64 = CrossFitRidge(alphas=alphas, feature_chunk=16).fit(x, f, folds)
    r32 = CrossFitRidge(alphas=alphas, feature_chunk=16, path_dtype="float32").fit(x, f, folds)
    sst = r64.sst_[None, None, :]
    np.testing.assert_allclose(r32.cv_sse_ / sst, r64.cv_sse_ / sst, atol=1e-5)
    differ = r32.alpha_ != r64.alpha_
    assert differ.mean() < 0.05
    for k, j in zip(*np.nonzero(differ), strict=True):
        a32 = np.searchsorted(r64.alphas_, r32.alpha_[k, j])
        a64 = np.searchsorted(r64.alphas_, r64.alpha_[k, j])
        gap = r64.cv_sse_[k, a32, j] - r64.cv_sse_[k, a64, j]
        assert 0 <= gap <= 1e-5 * r64.sst_[j]
    np.testing.assert_allclose(r32.r2_, r64.r2_, atol=1e-4)
    assert r64.r2_[0] > 0.99
    with pytest.raises(CrosslayerError, match="path_dtype"):
        CrossFitRidge(path_dtype="float16").fit(x, f, folds)


def test_fraction_path_equals_one_product_per_alpha():
    """The default inner-CV path (partial fractions, one product for the whole grid) gives the
    per-alpha products' errors to round-off, so every alpha and score is the same; on
    collinear inputs (a zero eigenvalue, an exact tie) and with alpha 0 it falls back."""
    x, f, docs = _data(1500, 20, 30, 50, seed=6)
    x[:, 0] *= 300.0  # an outlier dimension
    x[:, 3] = x[:, 4] + 1e-9 * x[:, 5]  # nearly collinear: a tiny eigenvalue and close pairs
    folds = grouped_folds(docs, 5, seed=0)
    for alphas in ((1e-6, 1e-4, 1e-2, 1.0, 100.0), (0.0, 1e-3, 1.0)):
        dense = CrossFitRidge(alphas=alphas, feature_chunk=8, path="dense").fit(x, f, folds)
        frac = CrossFitRidge(alphas=alphas, feature_chunk=8).fit(x, f, folds)
        sst = dense.sst_[None, None, :]
        np.testing.assert_allclose(frac.cv_sse_ / sst, dense.cv_sse_ / sst, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(frac.alpha_, dense.alpha_)
        np.testing.assert_allclose(frac.r2_, dense.r2_, rtol=0, atol=1e-12)
    with pytest.raises(CrosslayerError, match="path 'fractions'"):
        CrossFitRidge(path="cholesky").fit(x, f, folds)


def test_penalty_path_against_the_direct_sum_and_its_fallbacks():
    """PenaltyPath's SSE equals the direct per-penalty sum on a wide spectrum with close and
    equal eigenvalues; a spectrum with many ties, or a penalty meeting a zero eigenvalue,
    takes the per-penalty products (and still gives the same SSE)."""
    rng = np.random.default_rng(3)
    d, m = 40, 12
    V = torch.linalg.qr(torch.as_tensor(rng.normal(size=(d, d))))[0]
    g = torch.as_tensor(rng.normal(size=(3 * d, d)))
    g = g.T @ g
    q, h = torch.as_tensor(rng.normal(size=(d, m))), torch.as_tensor(rng.normal(size=(d, m)))
    c = torch.as_tensor(rng.uniform(50, 100, m))
    spectra = {
        "wide, a close pair and a tie": np.r_[np.logspace(-4, 2, d - 3), 5.0, 5.0 + 1e-9, 5.0],
        "many ties": np.r_[np.zeros(d // 2), np.logspace(-2, 1, d - d // 2)],
    }
    for name, lam in spectra.items():
        evals = torch.as_tensor(np.sort(lam))
        M = V.T @ g @ V
        for pens in (np.array([1e-3, 1.0, 100.0]), np.array([0.0, 1.0])):
            want = sse_path_per_target(V, evals, M, q, h, c, pens)
            path = PenaltyPath(evals, M, pens)
            fell_back = path.N is None
            assert fell_back == (name == "many ties" or (pens[0] == 0.0 and lam.min() == 0.0))
            got = path.sse(q, V.T @ h, c)
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-11, err_msg=name)


# ---------------------------------------------------------------------------- logistic


@pytest.fixture(scope="module")
def small_logistic():
    x, f, docs = _data(600, 5, 4, 30, seed=2)
    folds = grouped_folds(docs, 3, seed=0)
    Cs = (0.001, 0.01, 0.1, 1.0)
    probes = CrossFitLogistic(Cs=Cs, tol=1e-9, max_iter=1000, dtype="float64", feature_chunk=3)
    return x, f, folds, Cs, probes.fit(x, f, folds)


def test_logistic_equals_sklearn_at_convergence_and_chooses_logisticregressioncv_s_c(
    small_logistic,
):
    x, f, folds, Cs, r = small_logistic
    assert r.n_not_converged_ == 0 and r.converged_.all()
    for k in range(3):
        T = folds != k
        xs = StandardScaler().fit_transform(x[T])
        splits = [
            (np.nonzero(folds[T] != i)[0], np.nonzero(folds[T] == i)[0]) for i in range(3) if i != k
        ]
        for j in range(f.shape[1]):
            y = f[T, j] > 0
            cv = LogisticRegressionCV(
                Cs=list(Cs),
                cv=splits,
                class_weight="balanced",
                scoring=_balanced_log_likelihood,
                tol=1e-10,
                max_iter=10_000,
                l1_ratios=(0.0,),
                use_legacy_attributes=False,
            ).fit(xs, y)
            assert r.C_[k, j] == pytest.approx(cv.C_)
            np.testing.assert_allclose(-r.cv_loss_[k, :, j], cv.scores_.mean(0).ravel(), atol=1e-6)
            lr = LogisticRegression(
                C=r.C_[k, j], class_weight="balanced", tol=1e-10, max_iter=10_000
            ).fit(xs, y)
            np.testing.assert_allclose(r.coef_[k, j], lr.coef_[0], atol=1e-4)
            assert r.intercept_[k, j] == pytest.approx(lr.intercept_[0], abs=1e-4)


def test_logistic_out_of_fold_scores_use_training_thresholds(small_logistic):
    x, f, folds, _, r = small_logistic
    y = f > 0
    z = np.empty(f.shape)
    for k in range(3):
        rows = folds == k
        xs = (x[rows] - r.x_mean_[k]) / r.x_scale_[k]
        z[rows] = xs @ r.coef_[k].T + r.intercept_[k] - r.threshold_[k]
        # The threshold is the best training balanced accuracy, never worse than logit 0.
        T = ~rows
        zt = (x[T] - r.x_mean_[k]) / r.x_scale_[k] @ r.coef_[k].T + r.intercept_[k]
        for j in range(f.shape[1]):
            yt = y[T, j]
            at = [0.5 * ((zt[yt, j] > c).mean() + (zt[~yt, j] <= c).mean()) for c in (0.0,)]
            got = 0.5 * (
                (zt[yt, j] > r.threshold_[k, j]).mean() + (zt[~yt, j] <= r.threshold_[k, j]).mean()
            )
            assert got >= at[0] - 1e-12
    for j in range(f.shape[1]):
        ba = 0.5 * ((z[y[:, j], j] > 0).mean() + (z[~y[:, j], j] <= 0).mean())
        assert r.balanced_accuracy_[j] == pytest.approx(ba, abs=1e-6)
        assert r.auroc_[j] == pytest.approx(roc_auc_score(y[:, j], z[:, j]), abs=1e-6)
    assert r.auroc_[-1] > 0.8 > r.auroc_[0]  # signal grows with the feature index


def test_a_feature_scores_the_same_alone_and_in_a_batch_of_64():
    x, f, docs = _data(1500, 8, 64, 40, seed=3)
    folds = grouped_folds(docs, 3, seed=0)
    kw = {"Cs": (0.01, 1.0), "feature_chunk": 64}
    batch = CrossFitLogistic(**kw).fit(x, f, folds)
    assert batch.n_not_converged_ == 0
    for j in (5, 40, 63):
        alone = CrossFitLogistic(**kw).fit(x, f[:, j : j + 1], folds)
        assert alone.balanced_accuracy_[0] == pytest.approx(batch.balanced_accuracy_[j], abs=1e-3)
        assert alone.auroc_[0] == pytest.approx(batch.auroc_[j], abs=1e-3)
        np.testing.assert_array_equal(alone.C_[:, 0], batch.C_[:, j])
        np.testing.assert_allclose(alone.coef_[:, 0], batch.coef_[:, j], atol=1e-3)


def test_features_that_do_not_converge_are_flagged_and_counted():
    x, f, docs = _data(600, 5, 4, 30, seed=4)
    folds = grouped_folds(docs, 3, seed=0)
    r = CrossFitLogistic(Cs=(1.0,), max_iter=2, tol=1e-9).fit(x, f, folds)
    assert (~r.converged_).sum() > 0 and r.n_not_converged_ == (~r.converged_).sum()
    assert (r.n_iter_ <= 2).all()


def test_repeated_rows_are_merged_exactly():
    """X with few distinct rows (token embeddings): the same probes as without merging."""
    rng = np.random.default_rng(5)
    vocab = rng.normal(size=(30, 5)) * np.linspace(0.5, 5, 5)
    tok, docs = rng.integers(0, 30, 900), rng.integers(0, 30, 900)
    x = vocab[tok]
    f = np.where(x @ rng.normal(size=(5, 3)) + rng.normal(size=(900, 3)) > 1, 1.0, 0.0)
    folds = grouped_folds(docs, 3, seed=0)
    kw = {"Cs": (0.1, 1.0), "tol": 1e-9, "dtype": "float64"}
    merged = CrossFitLogistic(**kw).fit(x, f, folds)
    plain = CrossFitLogistic(merge_rows=False, **kw).fit(x, f, folds)
    np.testing.assert_allclose(merged.coef_, plain.coef_, atol=1e-6)
    np.testing.assert_allclose(merged.auroc_, plain.auroc_, atol=1e-9)
    np.testing.assert_allclose(merged.balanced_accuracy_, plain.balanced_accuracy_, atol=1e-9)


def test_vectorised_auroc_matches_sklearn_with_ties():
    import torch

    rng = np.random.default_rng(6)
    z = rng.integers(0, 5, size=(300, 4)).astype(float)
    y = rng.random((300, 4)) < 0.3
    got = auroc(torch.as_tensor(z), torch.as_tensor(y)).numpy()
    np.testing.assert_allclose(got, [roc_auc_score(y[:, j], z[:, j]) for j in range(4)], atol=1e-12)


# ---------------------------------------------------------------------------- null and tokens


def test_null_features_score_chance_out_of_fold_while_in_sample_eta2_is_biased():
    """Features independent of X and of the token: out of fold they score ~0.5 balanced
    accuracy and ~0 R²; in-sample eta squared on the same tokens is ~(G-1)/(N-1)."""
    rng = np.random.default_rng(7)
    n, d, m, G = 3000, 10, 24, 300
    x = rng.normal(size=(n, d))
    docs, tok = rng.integers(0, 60, n), rng.integers(0, G, n)
    f = np.where(rng.random((n, m)) < 0.1, rng.exponential(size=(n, m)), 0.0)
    folds = grouped_folds(docs, 4, seed=0)
    logit = CrossFitLogistic(Cs=(0.01, 1.0)).fit(x, f, folds)
    assert abs(np.mean(logit.balanced_accuracy_) - 0.5) < 0.02
    assert abs(np.mean(logit.auroc_) - 0.5) < 0.02
    ridge = CrossFitRidge().fit(x, f, folds)
    assert -0.02 < np.mean(ridge.r2_) <= 0.002
    eta2 = token_determinedness(tok, f)
    bias = (G - 1) / (n - 1)  # ~0.1: what a token-independent feature gets in sample
    assert np.mean(eta2) == pytest.approx(bias, rel=0.15)
    lookup = token_lookup_r2(tok, f, folds, n_permutations=3)
    assert -0.02 < np.mean(lookup.r2) <= 0.005
    # Observed and permuted are exchangeable under the null: the same level.
    assert abs(np.mean(lookup.r2) - np.mean(lookup.null_r2)) < 0.005
    assert np.mean(lookup.r2 <= lookup.null_level + 0.005) > 0.9


def _slow_token_lookup(tok, f, folds, grid):
    """One feature, the plain way: shrunk per-token means fitted on the training folds,
    the pseudo-count by leave-one-training-fold-out CV, pooled out-of-fold R²."""
    K = folds.max() + 1

    def predict(train, test, lam):
        mu = f[train].mean()
        out = np.full(test.sum(), mu)
        for i, t in enumerate(tok[test]):
            seen = train & (tok == t)
            n_t = seen.sum()
            if n_t and np.isfinite(lam):
                out[i] = mu + n_t / (n_t + lam) * (f[seen].mean() - mu)
        return out

    sse, chosen = 0.0, []
    for k in range(K):
        T = folds != k
        cv = [
            sum(((f[folds == i] - predict(T & (folds != i), folds == i, lam)) ** 2).sum()
                for i in range(K) if i != k)
            for lam in grid
        ]  # fmt: skip
        lam = grid[int(np.argmin(cv))]
        chosen.append(lam)
        sse += ((f[folds == k] - predict(T, folds == k, lam)) ** 2).sum()
    return 1 - sse / ((f - f.mean()) ** 2).sum(), chosen


def test_token_lookup_equals_a_slow_reference_on_sparse_and_dense_input():
    rng = np.random.default_rng(11)
    n, G = 900, 60
    tok = np.minimum(rng.zipf(1.4, n), G)  # frequent and rare tokens; some only in one fold
    docs = rng.integers(0, 30, n)
    g = rng.normal(size=G + 1)
    f = np.where(rng.random((n, 4)) < [0.05, 0.3, 1.0, 0.02], np.abs(g[tok][:, None] * [1, 1, 3, 2]
                 + rng.normal(size=(n, 4))), 0.0)  # fmt: skip
    folds = grouped_folds(docs, 4, seed=2)
    grid = (0.0, 1.0, 10.0, 100.0, np.inf)
    dense = token_lookup_r2(tok, f, folds, strengths=grid, n_permutations=1, seed=3)
    sparse = token_lookup_r2(tok, sp.csc_matrix(f), folds, strengths=grid, n_permutations=1,
                             seed=3, feature_chunk=3)  # fmt: skip
    for j in range(4):
        r2, chosen = _slow_token_lookup(tok, f[:, j], folds, np.array(grid))
        assert dense.r2[j] == pytest.approx(r2, abs=1e-10)
        np.testing.assert_array_equal(dense.strength[:, j], chosen)
    wrapped = token_lookup_r2(tok, SparseColumns(sp.csc_matrix(f)), folds, strengths=grid,
                              n_permutations=1, seed=3)  # fmt: skip
    np.testing.assert_allclose(sparse.r2, dense.r2, atol=1e-12)
    np.testing.assert_allclose(sparse.null_r2, dense.null_r2, atol=1e-12)
    np.testing.assert_allclose(wrapped.r2, dense.r2, atol=1e-12)
    perm = np.random.default_rng(3).permutation(np.unique(tok, return_inverse=True)[1])
    assert dense.null_r2[0, 1] == pytest.approx(
        _slow_token_lookup(perm, f[:, 1], folds, np.array(grid))[0], abs=1e-10
    )


def test_token_lookup_with_two_folds_takes_the_least_shrinkage():
    """K = 2 leaves the inner CV an empty training set: the first strength of the grid is
    taken, and the out-of-fold R² is that lookup's (the slow reference at that strength)."""
    rng = np.random.default_rng(12)
    n = 600
    tok = rng.integers(0, 30, n)
    f = np.where(rng.random((n, 2)) < 0.3, rng.random((n, 2)) + tok[:, None] * 0.1, 0.0)
    folds = (np.arange(n) // 50) % 2
    res = token_lookup_r2(tok, f, folds, strengths=(3.0, 30.0), n_permutations=0)
    np.testing.assert_array_equal(res.strength, 3.0)
    for j in range(2):
        with warnings.catch_warnings():  # the reference's inner CV on an empty set: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            want = _slow_token_lookup(tok, f[:, j], folds, np.array([3.0]))[0]
        assert res.r2[j] == pytest.approx(want, abs=1e-10)


def test_a_token_determined_feature_gets_its_true_share():
    rng = np.random.default_rng(8)
    n, G = 4000, 40
    tok, docs = rng.integers(0, G, n), rng.integers(0, 80, n)
    g = rng.normal(size=G) * 2
    f = np.stack(
        [g[tok] + 0.1 * rng.normal(size=n), g[tok] + 2.0 * rng.normal(size=n), rng.normal(size=n)],
        1,
    )
    share = np.var(g[tok]) / f.var(0)  # [~1, ~0.5, ~0]
    folds = grouped_folds(docs, 5, seed=1)
    res = token_lookup_r2(tok, f, folds, n_permutations=2)
    np.testing.assert_allclose(res.r2[:2], share[:2], atol=0.03)
    assert abs(res.r2[2]) < 0.02 and res.r2[1] > res.null_level[1] + 0.3
    assert np.isinf(res.strength[:, 2]).mean() >= 0.4  # pure noise: shrunk to the mean
    assert (res.strength[:, 0] <= 1.0).all()  # nearly exact: little shrinkage


# ---------------------------------------------------------------------------- positives


def test_minimum_positives_rule_excludes_and_counts_per_reason():
    rng = np.random.default_rng(9)
    n = 2000
    folds = grouped_folds(rng.integers(0, 50, n), 4, seed=0)
    f = np.zeros((n, 5), dtype=np.float32)
    f[rng.random(n) < 0.3, 0] = 1.0  # ~600 active: ok
    f[rng.choice(n, 60, replace=False), 1] = 1.0  # 60 active: too few to fit (< 100 per T_k)
    f[folds == 0, 2] = 1.0  # active only in fold 0: dead in T_0, the folds that score fold 0
    f[:, 3] = 1.0
    f[rng.choice(n, 50, replace=False), 3] = 0.0  # almost always active: few inactive
    f[rng.random(n) < 0.5, 4] = 1.0
    pc = count_positives(f, folds, min_fit=100, min_score=20)
    assert list(pc.status) == [OK, FEW_POS_FIT, DEAD, FEW_NEG_FIT, OK]
    assert pc.alive.tolist() == [True, True, False, True, True]
    assert pc.excluded == {
        DEAD: 1,
        FEW_POS_FIT: 1,
        FEW_NEG_FIT: 1,
        FEW_POS_SCORE: 0,
        REASONS[-1]: 0,
    }
    np.testing.assert_array_equal(pc.n_pos, (f > 0).sum(0))
    np.testing.assert_array_equal(pc.n_pos_train[1], ((f > 0) & (folds != 1)[:, None]).sum(0))
    # sparse input is counted from its non-zeros: the same counts as the dense rows, also for
    # a positive threshold and explicit negative values; a negative threshold (zeros active)
    # takes the dense path
    g = f * rng.choice([-1.0, 0.4, 1.0], size=f.shape).astype(np.float32)
    for thr in (0.0, 0.5, -0.5):
        dense = count_positives(g, folds, threshold=thr, min_fit=100, min_score=20)
        for wrapped in (sp.csr_matrix(g), SparseColumns(sp.csr_matrix(g))):
            sparse = count_positives(wrapped, folds, threshold=thr, min_fit=100, min_score=20)
            np.testing.assert_array_equal(sparse.n_pos_train, dense.n_pos_train)
            assert list(sparse.status) == list(dense.status)
    # Too few to score but enough to fit needs min_score > what fitting implies: given counts.
    pc = apply_rule(
        n_pos_train=np.array([[0, 150, 150], [200, 150, 150]]),
        n_train=np.array([1000, 1000]),
        n_pos=np.array([200, 15, 150]),
        n=2000,
        min_fit=100,
        min_score=20,
    )
    assert list(pc.status) == [DEAD, FEW_POS_SCORE, OK]
    assert pc.excluded == {r: int(r in (DEAD, FEW_POS_SCORE)) for r in REASONS}
    assert pc.alive.tolist() == [False, True, True]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: CrossFitRidge(alphas=()).fit(np.ones((4, 2)), np.ones((4, 1)), [0, 0, 1, 1]),
            "alphas",
        ),
        (
            lambda: CrossFitLogistic(Cs=(0.0,)).fit(np.ones((4, 2)), np.ones((4, 1)), [0, 0, 1, 1]),
            "Cs",
        ),
        (lambda: CrossFitRidge().fit(np.ones((4, 2)), np.ones((3, 1)), [0, 0, 1, 1]), "rows"),
        (lambda: CrossFitRidge().fit(np.ones((4, 2)), np.ones((4, 1)), [0, 0, 2, 2]), "K-1"),
        (
            lambda: token_lookup_r2([1, 2, 3], np.ones((3, 1)), [0, 1, 1], strengths=(-1.0,)),
            "strengths",
        ),
    ],
)
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises(CrosslayerError, match=match):
        call()


def test_a_feature_scores_the_same_alone_and_in_a_batch_of_512_with_the_ridge_rule():
    """The issue's test: a feature's score does not depend on its batch (C from the rule)."""
    x, f, docs = _data(1200, 6, 512, 40, seed=6)
    folds = grouped_folds(docs, 3, seed=0)
    kw = {"C_rule": "ridge", "feature_chunk": 512}
    batch = CrossFitLogistic(**kw).fit(x, f, folds)
    assert batch.n_not_converged_ == 0
    for j in (0, 300, 511):
        alone = CrossFitLogistic(**kw).fit(x, f[:, j : j + 1], folds)
        np.testing.assert_allclose(alone.C_[:, 0], batch.C_[:, j], rtol=1e-6)
        assert alone.balanced_accuracy_[0] == pytest.approx(batch.balanced_accuracy_[j], abs=1e-3)
        assert alone.auroc_[0] == pytest.approx(batch.auroc_[j], abs=1e-3)


def test_ridge_rule_maps_the_label_ridge_alpha_to_C():
    """C_kj = 4 / (alpha_kj n_k), alpha_kj what CrossFitRidge picks for the 0/1 labels."""
    x, f, docs = _data(900, 5, 6, 30, seed=7)
    folds = grouped_folds(docs, 3, seed=0)
    r = CrossFitLogistic(C_rule="ridge", tol=1e-8, dtype="float64").fit(x, f, folds)
    ridge = CrossFitRidge().fit(x, (f > 0).astype(np.float32), folds)
    n_k = np.array([(folds != k).sum() for k in range(3)], float)
    np.testing.assert_allclose(r.rule_alpha_, ridge.alpha_)
    np.testing.assert_allclose(r.C_, 4.0 / (ridge.alpha_ * n_k[:, None]), rtol=1e-6)
    # and each fit is the scikit-learn solution at that C
    k, j = 1, 3
    T = folds != k
    xs = StandardScaler().fit_transform(x[T])
    lr = LogisticRegression(C=r.C_[k, j], class_weight="balanced", tol=1e-10, max_iter=10_000)
    lr.fit(xs, f[T, j] > 0)
    np.testing.assert_allclose(r.coef_[k, j], lr.coef_[0], atol=1e-4)


def test_preconditioning_changes_the_iterations_not_the_solution():
    x, f, docs = _data(1500, 8, 16, 40, seed=8)
    x = x * np.logspace(-2, 2, 8)  # badly scaled inputs: whitening and penalty disagree
    folds = grouped_folds(docs, 3, seed=0)
    kw = {"Cs": (0.001,), "tol": 1e-7, "max_iter": 3000, "dtype": "float64"}
    plain = CrossFitLogistic(precondition=False, **kw).fit(x, f, folds)
    pre = CrossFitLogistic(precondition=True, **kw).fit(x, f, folds)
    assert pre.converged_.all() and plain.converged_.all()
    np.testing.assert_allclose(pre.coef_, plain.coef_, atol=1e-4)
    assert pre.n_iter_.sum() < plain.n_iter_.sum()


def test_warm_starts_across_folds_change_the_iterations_not_the_solution():
    """Each fold starts from the feature's previous fold's fit, carried into its basis."""
    x, f, docs = _data(1500, 8, 16, 40, seed=9)
    x = x * np.logspace(-1, 1, 8) + 3.0  # a mean and unequal scales: the bases differ per fold
    folds = grouped_folds(docs, 4, seed=0)
    kw = {"C_rule": "ridge", "tol": 1e-7, "max_iter": 3000, "dtype": "float64"}
    cold = CrossFitLogistic(warm_start=False, **kw).fit(x, f, folds)
    warm = CrossFitLogistic(warm_start=True, **kw).fit(x, f, folds)
    assert cold.converged_.all() and warm.converged_.all()
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=1e-4)
    np.testing.assert_allclose(warm.intercept_, cold.intercept_, atol=1e-4)
    np.testing.assert_allclose(warm.balanced_accuracy_, cold.balanced_accuracy_, atol=1e-9)
    # the first fold has nothing to start from; later folds need fewer iterations
    np.testing.assert_array_equal(warm.n_iter_[0], cold.n_iter_[0])
    assert warm.n_iter_[1:].sum() < cold.n_iter_[1:].sum()


def test_given_label_alphas_give_the_rule_s_own_fit():
    """study A passes the alphas of its one ridge pass over features and labels."""
    x, f, docs = _data(900, 5, 6, 30, seed=7)
    folds = grouped_folds(docs, 3, seed=0)
    own = CrossFitLogistic(C_rule="ridge").fit(x, f, folds)
    alpha = CrossFitRidge().fit(x, (f > 0).astype(np.float32), folds).alpha_
    given = CrossFitLogistic(C_rule="ridge").fit(x, f, folds, label_alpha=alpha)
    np.testing.assert_array_equal(given.C_, own.C_)
    np.testing.assert_array_equal(given.balanced_accuracy_, own.balanced_accuracy_)
    with pytest.raises(CrosslayerError, match="label_alpha has shape"):
        CrossFitLogistic(C_rule="ridge").fit(x, f, folds, label_alpha=alpha[:, :2])
