"""FeatureProbes against per-feature scikit-learn Ridge / LogisticRegression fits."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, r2_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from crosslayer.errors import CrosslayerError
from crosslayer.probes import ALWAYS, DEAD, FeatureProbes, _auroc, study_protocol_probe

N, D, M = 1500, 12, 24


def _features(x: np.ndarray, seed: int) -> np.ndarray:
    """JumpReLU-like sparse features of an uneven-scale input, with noise."""
    rng = np.random.default_rng(seed)
    w = np.random.default_rng(42).normal(size=(D, M))
    b = np.random.default_rng(43).uniform(-3, 0.5, size=M)
    z = (x - 5) / 4 @ w / np.sqrt(D) * 3 + b + rng.normal(size=(len(x), M))
    return np.where(z > 0, z, 0).astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    scales = np.linspace(0.5, 8, D)
    x, xh = (rng.normal(size=(n, D)) * scales + 5 for n in (N, 600))
    f, fh = _features(x, 1), _features(xh, 2)
    f[:, 0] = 0.0  # dead
    f[:, 1] = 1.0 + f[:, 1]  # always active
    probes = FeatureProbes(alpha=1e-3, C=0.5, feature_chunk=7, max_iter=200).fit(x, f)
    return x, f, xh, fh, probes, probes.evaluate(xh, fh)


def test_agrees_with_sklearn_ridge_and_logistic_on_a_sample_of_features(fitted):
    x, f, xh, fh, probes, res = fitted
    sc = StandardScaler().fit(x)
    xs, xhs = sc.transform(x), sc.transform(xh)
    for j in [2, 5, 9, 13, 20, 23]:
        ridge = Ridge(alpha=1e-3 * N).fit(xs, f[:, j])
        assert res.r2[j] == pytest.approx(r2_score(fh[:, j], ridge.predict(xhs)), abs=1e-4)
        np.testing.assert_allclose(probes.ridge_coef_[j], ridge.coef_, atol=1e-4)
        y, yh = f[:, j] > 0, fh[:, j] > 0
        logit = LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000).fit(xs, y)
        np.testing.assert_allclose(probes.logit_coef_[j], logit.coef_[0], atol=0.02)
        assert res.auroc[j] == pytest.approx(
            roc_auc_score(yh, logit.decision_function(xhs)), abs=0.01
        )
        assert res.balanced_accuracy[j] == pytest.approx(
            balanced_accuracy_score(yh, logit.predict(xhs)), abs=0.01
        )
        assert res.density[j] == pytest.approx(y.mean())


def test_dead_and_always_active_features_are_nan_with_a_reason(fitted):
    *_, res = fitted
    assert res.status[0] == DEAD and res.status[1] == ALWAYS
    assert np.isnan([res.r2[0], res.auroc[0], res.auroc[1], res.balanced_accuracy[1]]).all()
    assert np.isfinite(res.r2[1])  # regression is still defined for it
    ok = res.status == "ok"
    assert ok.sum() >= M - 4 and np.isfinite(res.auroc[ok]).all()
    summary = res.summary()
    assert summary["status"][DEAD] == 1 and summary["auroc"]["n"] == ok.sum()


def test_function_source_gives_the_same_probes_as_an_array(fitted):
    x, f, xh, fh, probes, res = fitted
    again = FeatureProbes(alpha=1e-3, C=0.5, feature_chunk=7, max_iter=200).fit(
        x, lambda a, b: f[:, a:b], n_features=M
    )
    np.testing.assert_allclose(again.ridge_coef_, probes.ridge_coef_, atol=1e-6)
    res2 = again.evaluate(xh, lambda a, b: fh[:, a:b], n_features=M)
    np.testing.assert_allclose(res2.auroc, res.auroc, atol=1e-4)
    assert probes.score(xh, fh) == pytest.approx(np.nanmean(res.balanced_accuracy))


def test_vectorised_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    z = rng.integers(0, 5, size=(300, 4)).astype(float)  # many ties
    lab = rng.random((300, 4)) < 0.3
    expected = [roc_auc_score(lab[:, j], z[:, j]) for j in range(4)]
    np.testing.assert_allclose(_auroc(z, lab), expected, atol=1e-12)


def test_study_protocol_is_seeded_and_uses_its_threshold():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 3))
    f = np.where(x[:, 0] > 0, 1.0, 0.05)  # 0.05 counts as inactive at threshold 0.1
    r1 = study_protocol_probe(x, f, seed=1)
    assert r1 == study_protocol_probe(x, f, seed=1)
    assert r1["accuracy"] > 0.95  # separable on x0
    assert np.isnan(study_protocol_probe(x, f, threshold=0.0)["accuracy"])  # all "active"
    assert r1["n_per_class"] == min((f > 0.1).sum(), (f <= 0.1).sum())
    assert np.isnan(study_protocol_probe(x, np.zeros(400))["accuracy"])


def test_study_protocol_fits_on_one_blas_thread_and_restores_the_pools(monkeypatch):
    """The fit runs with numpy's and scipy's OpenBLAS limited to one thread, gives what a
    plain scikit-learn fit under that limit gives, and leaves the thread pools as they were."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    f = (x @ rng.normal(size=8) + rng.normal(size=600) > 0.5).astype(float)
    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    seen: list[int] = []
    real_fit = LogisticRegression.fit

    def spy(self, *args, **kwargs):  # records the BLAS threads the fit runs with
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas")
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    got = study_protocol_probe(x, f, seed=2)
    monkeypatch.undo()
    assert seen and set(seen) == {1}
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == before
    # the protocol written out: balanced draw, 80/20 split, sklearn on one thread
    lab = f > 0.1
    r = np.random.default_rng(2)
    pos, neg = np.nonzero(lab)[0], np.nonzero(~lab)[0]
    k = min(len(pos), len(neg))
    idx = np.concatenate([r.choice(pos, k, replace=False), r.choice(neg, k, replace=False)])
    r.shuffle(idx)
    test, train = idx[: round(0.2 * len(idx))], idx[round(0.2 * len(idx)) :]
    with threadpool_limits(1, user_api="blas"):
        clf = LogisticRegression(max_iter=1000).fit(x[train], lab[train])
    assert got["accuracy"] == clf.score(x[test], lab[test])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: FeatureProbes().fit(np.ones((5, 2)) + np.eye(5, 2), np.zeros((5, 3))),
            "none of the 3 features",
        ),
        (lambda: FeatureProbes().fit(np.ones((5, 2)), np.ones((4, 3))), "rows"),
        (lambda: FeatureProbes(C=0).fit(np.ones((5, 2)), np.ones((5, 3))), "C > 0"),
        (lambda: FeatureProbes().fit(np.eye(5, 2), lambda a, b: None), "n_features"),
        (lambda: FeatureProbes().evaluate(np.ones((5, 2)), np.ones((5, 3))), "not fitted"),
    ],
)
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises(CrosslayerError, match=match):
        call()


def test_evaluate_checks_feature_count(fitted):
    *_, xh, fh, probes, _ = fitted
    with pytest.raises(CrosslayerError, match="features"):
        probes.evaluate(xh, fh[:, :5])


def test_repeated_rows_are_merged_exactly_like_token_embeddings():
    """X with few distinct rows (as hook_embed: one row per vocabulary entry) is fitted on its
    distinct rows with class counts; the probes must equal sklearn on every token."""
    rng = np.random.default_rng(5)
    vocab = rng.normal(size=(40, D)) * np.linspace(0.5, 8, D) + 5
    ids, ids_h = rng.integers(0, 40, size=N), rng.integers(0, 40, size=600)
    x, xh = vocab[ids], vocab[ids_h]
    f, fh = _features(x, 6), _features(xh, 7)
    probes = FeatureProbes(alpha=1e-3, C=0.5, max_iter=200).fit(x, f)
    res = probes.evaluate(xh, fh)
    xs = StandardScaler().fit_transform(x)
    merged = 0
    for j in range(M):
        y = f[:, j] > 0
        if not 0 < y.sum() < N:
            continue
        merged += 1
        logit = LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000, tol=1e-8)
        logit.fit(xs, y)
        np.testing.assert_allclose(probes.logit_coef_[j], logit.coef_[0], atol=0.02)
        assert probes.logit_intercept_[j] == pytest.approx(logit.intercept_[0], abs=0.02)
    assert merged >= M // 2 and np.isfinite(res.auroc).sum() >= merged - 2


def test_features_are_read_in_blocks_of_target_chunk_with_the_same_result(fitted):
    """F is read a few columns at a time (bounded memory); the probes do not change."""
    x, f, *_, probes, _ = fitted
    widths: list[int] = []

    def block(a: int, b: int) -> np.ndarray:
        widths.append(b - a)
        return f[:, a:b]

    again = FeatureProbes(alpha=1e-3, C=0.5, feature_chunk=7, target_chunk=3, max_iter=200)
    again.fit(x, block, n_features=M)
    assert max(widths) <= 3 and sum(widths) == M
    np.testing.assert_allclose(again.ridge_coef_, probes.ridge_coef_, atol=1e-6)
    # The same problems. The module fixture may have run with another thread count, and
    # float32 sums taken in another order move L-BFGS's stopping point by up to ~1e-3.
    np.testing.assert_allclose(again.logit_coef_, probes.logit_coef_, atol=3e-3, equal_nan=True)
    np.testing.assert_array_equal(again.n_active_, probes.n_active_)


@pytest.mark.parametrize("repeated", [False, True])
def test_row_blocks_give_the_same_probes(fitted, repeated):
    """X read, hashed and fitted in blocks of 97 rows: the same probes as in one block."""
    x, f, *_ = fitted
    if repeated:  # the merged path: 40 distinct rows
        x = x[np.random.default_rng(8).integers(0, 40, size=N)]
    whole = FeatureProbes(alpha=1e-3, C=0.5, feature_chunk=7, max_iter=200).fit(x, f)
    blocks = FeatureProbes(alpha=1e-3, C=0.5, feature_chunk=7, max_iter=200, chunk_size=97)
    blocks.fit(x, f)
    np.testing.assert_allclose(blocks.mean_, whole.mean_, rtol=1e-6)
    np.testing.assert_allclose(blocks.scale_, whole.scale_, rtol=1e-6)
    np.testing.assert_allclose(blocks.ridge_coef_, whole.ridge_coef_, atol=1e-4)
    np.testing.assert_allclose(blocks.logit_coef_, whole.logit_coef_, atol=3e-3, equal_nan=True)
