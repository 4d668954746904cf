"""The layer decomposition against float64 scikit-learn / numpy references and known truths.

* the ridge predictors (``linear``, ``context_k``) equal a nested ``GroupKFold``-style loop of
  scikit-learn ``Ridge`` fits on ``StandardScaler``-ed designs (one alpha per layer and fold
  minimising the inner folds' summed squared error), on the full ``lagged`` design;
* ``token`` equals a numpy loop of the shrunk residual lookup with its inner CV;
* the document-bootstrap CIs equal a float64 loop over the same resamples (the drawn
  documents' rows stacked, scored with the estimate's formula, the out-of-fold predictions
  and the full-sample mean kept); with few documents every CI contains its estimate and
  the resamples of the ``mean`` predictor average to its analytic out-of-fold EV;
* on a layer built as linear + f(token) + a previous-token term + noise with known variance
  shares, every estimate recovers its share within 0.02 and its CI covers it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from crosslayer.crossfit import grouped_folds, lagged
from crosslayer.decomposition import bootstrap_weights, decompose
from crosslayer.decomposition.scores import LayerScores
from crosslayer.errors import CrosslayerError

# float32 products and predictions: figures agree with the float64 references to ~1e-5
ALPHAS = (1e-4, 1e-2, 1.0, 10.0, 100.0)
STRENGTHS = (0.0, 3.0, 30.0, np.inf)


def _data(
    seed: int = 0, n_docs: int = 60, doc_len: int = 30, V: int = 25, d: int = 5, m: int = 4
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    E = rng.normal(size=(V, d))
    docs = np.repeat(np.arange(n_docs), doc_len)
    ctx = np.repeat(np.arange(2 * n_docs), doc_len // 2)
    tok = rng.integers(0, V, len(docs))
    X = E[tok]
    prev = np.vstack([np.zeros((1, d)), X[:-1]]) * np.r_[False, ctx[1:] == ctx[:-1]][:, None]
    Y = (
        X @ rng.normal(size=(d, m))
        + rng.normal(size=(V, m))[tok]
        + prev @ rng.normal(size=(d, m))
        + rng.normal(size=(len(docs), m)) * np.array([0.5, 1.0, 3.0, 0.2])[:m]
    )
    Y[:, 0] *= 20  # one dominant dimension: variance-weighted and standardised EV differ
    return dict(X=X, Y=Y, tok=tok, ctx=ctx, docs=docs, folds=grouped_folds(docs, 4, 1))


def _fit_predict(
    Z: np.ndarray, Y: np.ndarray, tr: np.ndarray, te: np.ndarray, a: float
) -> np.ndarray:
    sc = StandardScaler().fit(Z[tr])
    model = Ridge(alpha=a * tr.sum()).fit(sc.transform(Z[tr]), Y[tr])
    return np.asarray(model.predict(sc.transform(Z[te])))


def _ref_ridge(Z: np.ndarray, Y: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Nested grouped CV, one alpha per outer fold on the summed inner squared error."""
    pred, chosen = np.empty_like(Y), []
    K = folds.max() + 1
    for k in range(K):
        T = folds != k
        path = []
        for a in ALPHAS:
            sse = 0.0
            for i in set(range(K)) - {k}:
                tr, te = T & (folds != i), folds == i
                sse += ((Y[te] - _fit_predict(Z, Y, tr, te, a)) ** 2).sum()
            path.append(sse)
        a = ALPHAS[int(np.argmin(path))]
        chosen.append(a)
        pred[folds == k] = _fit_predict(Z, Y, T, folds == k, a)
    return pred, chosen


def _ref_token(D: dict[str, Any]) -> np.ndarray:
    """Linear + shrunk token residual mean, lambda per dimension by inner CV on T_k."""
    X, Y, tok, folds = D["X"], D["Y"], D["tok"], D["folds"]
    K, pred = folds.max() + 1, np.empty_like(Y)
    _, lin_alpha = _ref_ridge(X, Y, folds)

    def table(r: np.ndarray, t: np.ndarray) -> tuple[dict[int, np.ndarray], dict[int, int]]:
        return {v: r[t == v].mean(0) for v in np.unique(t)}, {
            v: int((t == v).sum()) for v in np.unique(t)
        }

    def lookup(
        means: dict[int, np.ndarray], cnt: dict[int, int], t: np.ndarray, lam: float
    ) -> np.ndarray:
        out = np.zeros((len(t), Y.shape[1]))
        for j, v in enumerate(t):
            if v in means and np.isfinite(lam):
                out[j] = cnt[v] / (cnt[v] + lam) * means[v] if cnt[v] + lam > 0 else 0.0
        return out

    for k in range(K):
        T = folds != k
        lin_all = _fit_predict(X, Y, T, np.ones(len(Y), bool), lin_alpha[k])
        r = Y - lin_all
        path = np.zeros((len(STRENGTHS), Y.shape[1]))
        for i in set(range(K)) - {k}:
            tr, te = T & (folds != i), folds == i
            means, cnt = table(r[tr], tok[tr])
            for a, lam in enumerate(STRENGTHS):
                path[a] += ((r[te] - lookup(means, cnt, tok[te], lam)) ** 2).sum(0)
        lam_j = np.array(STRENGTHS)[path.argmin(0)]
        means, cnt = table(r[T], tok[T])
        te = folds == k
        off = np.stack([lookup(means, cnt, tok[te], lam)[:, j] for j, lam in enumerate(lam_j)], 1)
        pred[te] = lin_all[te] + off
    return pred


def _ev(Y: np.ndarray, P: np.ndarray) -> float:
    return float(1 - ((Y - P) ** 2).sum() / ((Y - Y.mean(0)) ** 2).sum())


def _ev_std(Y: np.ndarray, P: np.ndarray) -> float:
    return float(np.mean(1 - ((Y - P) ** 2).sum(0) / ((Y - Y.mean(0)) ** 2).sum(0)))


def _slow_bootstrap(
    Y: np.ndarray, P: np.ndarray, docs: np.ndarray, B: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """EV and standardised EV of every resample, float64, one loop step per resample: the
    drawn documents' rows stacked (a document drawn twice counts twice), scored with the
    estimate's formula; the out-of-fold predictions P and the full-sample mean are kept.
    The draws are ``default_rng(seed).integers(0, D, (B, D))``, as decompose draws them."""
    D = int(docs.max()) + 1
    draws = np.random.default_rng(seed).integers(0, D, size=(B, D))
    of_doc = [np.flatnonzero(docs == g) for g in range(D)]
    centre = Y.mean(0)
    ev, std = np.empty(B), np.empty(B)
    for b in range(B):
        rows = np.concatenate([of_doc[g] for g in draws[b]])
        sse = ((Y[rows] - P[rows]) ** 2).sum(0)
        sst = ((Y[rows] - centre) ** 2).sum(0)
        ev[b], std[b] = 1 - sse.sum() / sst.sum(), np.mean(1 - sse / sst)
    return ev, std


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    return _data()


@pytest.fixture(scope="module")
def result(data: dict[str, Any]) -> Any:
    D = data
    return decompose(
        D["X"], {"y": D["Y"]}, D["tok"], D["ctx"], D["docs"], D["folds"],
        max_lag=2, alphas=ALPHAS, strengths=STRENGTHS, n_bootstrap=300, seed=3,
        keep_rows=np.arange(0, len(D["Y"]), 7), keep_layers=["y"],
    )  # fmt: skip


@pytest.mark.parametrize("k", [0, 1, 2])
def test_ridge_predictors_equal_sklearn_nested_grouped_cv(data: Any, result: Any, k: int) -> None:
    D = data
    Z = lagged(D["X"], D["ctx"], k, dtype=np.float64)
    ref, alphas = _ref_ridge(Z, D["Y"], D["folds"])
    name = "linear" if k == 0 else f"context_{k}"
    got = result.layers["y"]
    assert got["alpha"][name] == alphas
    assert got[name]["ev"] == pytest.approx(_ev(D["Y"], ref), abs=1e-5)
    assert got[name]["ev_standardised"] == pytest.approx(_ev_std(D["Y"], ref), abs=1e-5)
    kept = result.kept["y"][name]
    np.testing.assert_allclose(kept, ref[result.keep_rows], rtol=1e-4, atol=1e-3)


def test_token_and_mean_equal_numpy_references(data: Any, result: Any) -> None:
    D, got = data, result.layers["y"]
    ref = _ref_token(D)
    assert got["token"]["ev"] == pytest.approx(_ev(D["Y"], ref), abs=1e-5)
    assert got["token"]["ev_standardised"] == pytest.approx(_ev_std(D["Y"], ref), abs=1e-5)
    mean = np.empty_like(D["Y"])
    for k in range(4):
        mean[D["folds"] == k] = D["Y"][D["folds"] != k].mean(0)
    assert got["mean"]["ev"] == pytest.approx(_ev(D["Y"], mean), abs=1e-7)
    assert got["mean"]["ev"] < 0  # out of fold, a training mean scores slightly below 0


def test_top_dimension_and_bootstrap_ci_equal_reference(data: Any, result: Any) -> None:
    D, got = data, result.layers["y"]
    Y = D["Y"]
    var = ((Y - Y.mean(0)) ** 2).sum(0)
    assert got["top_dim"] == 0 and got["top_dim_share"] == pytest.approx(var[0] / var.sum())
    ref, _ = _ref_ridge(D["X"], Y, D["folds"])
    assert got["linear"]["ev_without_top_dim"] == pytest.approx(_ev(Y[:, 1:], ref[:, 1:]), abs=1e-6)
    # the same resamples of documents, applied to the reference predictions row by row
    mean = np.empty_like(Y)
    for k in range(4):
        mean[D["folds"] == k] = Y[D["folds"] != k].mean(0)
    for name, P in (("linear", ref), ("mean", mean)):
        ev_b, std_b = _slow_bootstrap(Y, P, D["docs"], 300, 3)
        assert got[name]["ci95"] == pytest.approx(np.percentile(ev_b, [2.5, 97.5]), abs=1e-6)
        ci = np.percentile(std_b, [2.5, 97.5])
        assert got[name]["ev_standardised_ci95"] == pytest.approx(ci, abs=1e-6)
    best = max(["linear", "token", "context_1", "context_2"], key=lambda p: got[p]["ev"])
    assert got["rest"]["best"] == best
    assert got["rest"]["ev"] == pytest.approx(1 - got[best]["ev"])


def _few_documents(seed: int) -> dict[str, Any]:
    """16 documents with strong document offsets: the resample's mean moves a lot, which is
    where a bootstrap that re-centres SST on it fell below its own estimate."""
    rng = np.random.default_rng(seed)
    n_docs, doc_len, V, d, m = 16, 40, 30, 4, 6
    docs = np.repeat(np.arange(n_docs), doc_len)
    tok = rng.integers(0, V, len(docs))
    X = rng.normal(size=(V, d))[tok]
    Y = (
        X @ rng.normal(size=(d, m))
        + rng.normal(size=(n_docs, m))[docs] * 1.5
        + rng.normal(size=(len(docs), m))
    )
    return dict(X=X, Y=Y, tok=tok, ctx=docs, docs=docs, folds=grouped_folds(docs, 4, seed))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_ci_contains_its_estimate_with_few_documents(seed: int) -> None:
    D = _few_documents(seed)
    got = decompose(
        D["X"], {"y": D["Y"]}, D["tok"], D["ctx"], D["docs"], D["folds"], max_lag=1,
        alphas=ALPHAS, strengths=STRENGTHS, n_bootstrap=1000, seed=seed,
    ).layers["y"]  # fmt: skip
    for name in ("mean", "linear", "token", "context_1", "rest"):
        for key, ci in (("ev", "ci95"), ("ev_standardised", "ev_standardised_ci95")):
            lo, hi = got[name][ci]
            assert lo <= got[name][key] <= hi, (name, key, lo, got[name][key], hi)
            # and well inside it: the resamples are centred on the estimate (re-centring SST
            # on each resample's mean put the mean predictor's estimate 0.36-0.47 widths
            # above the midpoint, at the CI's upper edge; here at most ~0.11)
            assert abs((lo + hi) / 2 - got[name][key]) < 0.2 * (hi - lo), (name, key)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_of_the_out_of_fold_mean_is_centred_on_its_analytic_ev(seed: int) -> None:
    """The mean predictor's out-of-fold EV is ``-Σ_k n_k ‖ȳ_k - ȳ‖² ((N / (N - n_k))² - 1) /
    SST`` (its fold-k prediction, the other folds' mean, misses ȳ_k by ``N / (N - n_k)`` times
    ȳ_k - ȳ): its resamples average to it within 0.3 of their SD (re-centring SST on each
    resample's mean put them more than one SD below it), and equal the slow loop."""
    D = _few_documents(seed)
    Y, docs, folds = D["Y"], D["docs"], D["folds"]
    N, P, gap = len(Y), np.empty_like(Y), 0.0
    for k in range(4):
        n_k = (folds == k).sum()
        P[folds == k] = Y[folds != k].mean(0)
        gap += n_k * ((Y[folds == k].mean(0) - Y.mean(0)) ** 2).sum() * ((N / (N - n_k)) ** 2 - 1)
    analytic = -gap / ((Y - Y.mean(0)) ** 2).sum()
    scores = LayerScores(torch.as_tensor(docs), 16)
    scores.set_target(np.arange(len(Y)), Y)
    scores.add("mean", np.arange(len(Y)), Y - P)
    est, est_std = scores.draws(np.ones(16))["mean"]
    assert est[0] == pytest.approx(analytic, abs=1e-10)
    ev_b, std_b = scores.draws(bootstrap_weights(16, 4000, seed))["mean"]
    assert abs(ev_b.mean() - est[0]) < 0.3 * ev_b.std()
    assert abs(std_b.mean() - est_std[0]) < 0.3 * std_b.std()
    ref_ev, ref_std = _slow_bootstrap(Y, P, docs, 4000, seed)
    np.testing.assert_allclose(ev_b, ref_ev, rtol=0, atol=1e-10)
    np.testing.assert_allclose(std_b, ref_std, rtol=0, atol=1e-10)


def _known(seed: int = 0) -> tuple[dict[str, Any], dict[str, float]]:
    """linear 0.3 + token 0.2 + previous-token 0.25 + noise 0.25 of every dimension's variance."""
    rng = np.random.default_rng(seed)
    V, d, m, n_docs, doc_len = 60, 8, 6, 300, 80
    E = rng.normal(size=(V, d))
    E -= E.mean(0)
    S = E.T @ E / V  # token ids uniform: the population covariance of x
    docs = np.repeat(np.arange(n_docs), doc_len)
    ctx = np.repeat(np.arange(2 * n_docs), doc_len // 2)
    tok = rng.integers(0, V, len(docs))
    X = E[tok]
    present = np.r_[False, ctx[1:] == ctx[:-1]]
    prev = np.vstack([np.zeros((1, d)), X[:-1]]) * present[:, None]
    p = present.mean()

    def scaled(M: np.ndarray, var: np.ndarray, share: float) -> np.ndarray:
        return M * np.sqrt(share / var)  # per output column: exactly `share` of unit variance

    B = rng.normal(size=(d, m))
    B = scaled(B, np.diag(B.T @ S @ B), 0.3)
    F = rng.normal(size=(V, m))
    F -= E @ np.linalg.lstsq(E, F, rcond=None)[0]  # nothing linear in the embedding is left
    F -= F.mean(0)
    F = scaled(F, (F**2).mean(0), 0.2)
    C = rng.normal(size=(d, m))
    C = scaled(C, p * np.diag(C.T @ S @ C), 0.25)
    Y = X @ B + F[tok] + prev @ C + rng.normal(size=(len(docs), m)) * 0.5  # noise 0.25
    Y[:, 0] *= 10  # scale does not change a dimension's shares
    truth = {"linear": 0.3, "token": 0.5, "context_1": 0.55, "context_2": 0.55, "rest": 0.45}
    data = dict(X=X, Y=Y, tok=tok, ctx=ctx, docs=docs, folds=grouped_folds(docs, 5, 0))
    return data, truth


def test_known_decomposition_is_recovered_with_covering_cis() -> None:
    D, truth = _known()
    got = decompose(
        D["X"], {"y": D["Y"]}, D["tok"], D["ctx"], D["docs"], D["folds"], max_lag=2,
        n_bootstrap=400,
    ).layers["y"]  # fmt: skip
    for name, share in truth.items():
        for key, ci in (("ev", "ci95"), ("ev_standardised", "ev_standardised_ci95")):
            assert got[name][key] == pytest.approx(share, abs=0.02), (name, key)
            lo, hi = got[name][ci]
            assert lo <= share <= hi, (name, key, lo, hi)
    assert abs(got["mean"]["ev"]) < 0.01
    assert got["rest"]["best"].startswith("context")


def test_bad_input_is_refused(data: Any) -> None:
    D = data
    with pytest.raises(CrosslayerError, match="alphas must be > 0"):
        decompose(
            D["X"], {"y": D["Y"]}, D["tok"], D["ctx"], D["docs"], D["folds"], alphas=(0.0, 1.0)
        )
    with pytest.raises(CrosslayerError, match="rows, X has"):
        decompose(D["X"], {"y": D["Y"][:10]}, D["tok"], D["ctx"], D["docs"], D["folds"])
