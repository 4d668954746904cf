"""AffineTranscoder / MLPTranscoder / depth sweep against sklearn Ridge and numpy references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.depth import depth_sweep, fit_depth_curve
from crosslayer.transcoder import AffineTranscoder, MLPTranscoder


def _data(n: int, seed: int, d_in: int = 16, d_out: int = 6):
    """Linear data with uneven input scales and a large input offset (Gemma-like)."""
    rng = np.random.default_rng(seed)
    scales = np.linspace(0.2, 20, d_in)
    w = np.random.default_rng(99).normal(size=(d_in, d_out))
    x = rng.normal(size=(n, d_in)) * scales + 50
    y = x @ w / scales.mean() + 4 * rng.normal(size=(n, d_out)) + 7
    return x, y


def _rel_penalty(x: np.ndarray, alpha: float) -> float:
    """Our relative alpha as sklearn's Ridge alpha: alpha * trace(cov)/d * n."""
    return alpha * np.trace(np.cov(x.T, bias=True)) / x.shape[1] * len(x)


def test_single_alpha_matches_sklearn_ridge_from_float16_memmap(tmp_path):
    x, y = _data(2000, 0)
    xm = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float16, x.shape)
    xm[:] = x
    x16 = xm.astype(np.float64)
    tc = AffineTranscoder(alphas=[1e-2], chunk_size=300).fit(xm, y)
    ref = Ridge(alpha=_rel_penalty(x16, 1e-2)).fit(x16, y)
    np.testing.assert_allclose(tc.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(tc.intercept_, ref.intercept_, rtol=1e-6, atol=1e-6)
    assert tc.alpha_criterion_ == "single"


def test_heldout_alpha_path_equals_brute_force_refits():
    x, y = _data(600, 1)
    xv, yv = _data(400, 2)
    alphas = [1e-4, 1e-2, 1e-1, 1.0, 10.0]
    tc = AffineTranscoder(alphas=alphas).fit(x, y, xv, yv)
    sse = [
        ((yv - Ridge(alpha=_rel_penalty(x, a)).fit(x, y).predict(xv)) ** 2).sum() for a in alphas
    ]
    np.testing.assert_allclose(tc.alpha_scores_, sse, rtol=1e-7)
    assert tc.alpha_ == alphas[int(np.argmin(sse))]
    assert tc.alpha_criterion_ == "heldout"
    # held-out report from statistics == metrics computed on predictions
    expected = r2_score(yv, tc.predict(xv), multioutput="variance_weighted")
    assert tc.heldout_report_.explained_variance == pytest.approx(expected, abs=1e-5)
    assert tc.score(xv, yv) == pytest.approx(expected, abs=1e-5)
    train = tc.evaluate(x, y)
    assert tc.train_report_.r2_global_mean == pytest.approx(train.r2_global_mean, abs=1e-5)
    np.testing.assert_allclose(tc.train_report_.r2_per_dim, train.r2_per_dim, atol=1e-5)


def test_gcv_without_heldout_matches_numpy_formula():
    x, y = _data(300, 3)
    alphas = [1e-3, 1e-1, 10.0]
    tc = AffineTranscoder(alphas=alphas).fit(x, y)
    xc, yc = x - x.mean(0), y - y.mean(0)
    gcv = []
    for a in alphas:
        hat = xc @ np.linalg.solve(xc.T @ xc + _rel_penalty(x, a) * np.eye(16), xc.T)
        gcv.append(((yc - hat @ yc) ** 2).sum() / 300 / (1 - np.trace(hat) / 300) ** 2)
    np.testing.assert_allclose(tc.alpha_scores_, gcv, rtol=1e-6)
    assert tc.alpha_criterion_ == "gcv"


def test_partial_fit_over_batches_equals_fit():
    x, y = _data(900, 4)
    xv, yv = _data(300, 5)
    whole = AffineTranscoder().fit(x, y, xv, yv)
    streamed = AffineTranscoder()
    for i in range(0, 900, 256):
        streamed.partial_fit(x[i : i + 256], y[i : i + 256])
    streamed.partial_fit(xv, yv, heldout=True).finalize()
    np.testing.assert_allclose(streamed.coef_, whole.coef_, rtol=1e-8, atol=1e-10)
    assert streamed.alpha_ == whole.alpha_


def test_adam_recipe_approaches_least_squares_when_given_enough_steps():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(1000, 5))
    y = x @ rng.normal(size=(5, 3)) + 0.1 * rng.normal(size=(1000, 3))
    tc = AffineTranscoder(solver="adam", lr=5e-2, epochs=40, batch_size=200).fit(x, y)
    ols = Ridge(alpha=1e-9).fit(x, y)
    np.testing.assert_allclose(tc.coef_, ols.coef_, atol=0.03)
    assert tc.train_report_.explained_variance > 0.99
    assert tc.alpha_criterion_ == "none"


def test_mlp_explains_a_nonlinear_target_that_affine_cannot():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 4))
    y = np.stack([np.abs(x[:, 0]), x[:, 1] * x[:, 2], x[:, 3]], axis=1)
    xt, yt, xv, yv = x[:2400], y[:2400], x[2400:], y[2400:]
    affine = AffineTranscoder().fit(xt, yt).score(xv, yv)
    mlp = MLPTranscoder(hidden=64, max_epochs=20, lr=3e-3).fit(xt, yt)
    assert affine < 0.45  # only the linear third of the variance
    assert mlp.score(xv, yv) > 0.9
    assert mlp.val_losses_[0] > 2 * min(mlp.val_losses_)  # started at the affine fit, improved


def _batches(x, ys, size=128):
    for i in range(0, len(x), size):
        yield {"src": x[i : i + size], **{k: v[i : i + size] for k, v in ys.items()}}


def test_depth_sweep_equals_one_transcoder_per_target():
    x, y1 = _data(800, 8)
    xv, yv1 = _data(300, 9)
    y2, yv2 = np.sin(y1[:, :4]) + x[:, :4] * 0.1, np.sin(yv1[:, :4]) + xv[:, :4] * 0.1
    targets = {"t1": (y1, yv1), "t2": (y2, yv2)}

    class FakeStore:
        hooks = ("src", "t1", "t2")

        def iter_batches(self, hooks, *, split, batch_size, dtype):
            data = (
                (x, {k: v[0] for k, v in targets.items()})
                if split == "train"
                else (xv, {k: v[1] for k, v in targets.items()})
            )
            return _batches(data[0].astype(dtype), {k: v.astype(dtype) for k, v in data[1].items()})

    curve = depth_sweep(FakeStore(), "src", ["t1", "t2"])
    for i, (yt, yh) in enumerate(targets.values()):
        tc = AffineTranscoder().fit(
            x.astype(np.float32),
            yt.astype(np.float32),
            xv.astype(np.float32),
            yh.astype(np.float32),
        )
        assert curve.alpha[i] == tc.alpha_
        assert curve.heldout_explained_variance[i] == pytest.approx(tc.score(xv, yh), abs=1e-4)
        assert curve.train_r2_global_mean[i] == pytest.approx(
            tc.train_report_.r2_global_mean, abs=1e-6
        )
    assert curve.n_train == 800 and curve.n_heldout == 300
    with pytest.raises(CrosslayerError, match="not in the store"):
        depth_sweep(FakeStore(), "src", ["blocks.3.hook_resid_post"])
    with pytest.raises(CrosslayerError, match="no target"):
        fit_depth_curve([], [], "src", [])


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: AffineTranscoder(solver="sgd").fit(np.ones((4, 2)), np.ones((4, 2))), "solver"),
        (lambda: AffineTranscoder(alphas=[-1]).fit(np.ones((4, 2)), np.ones((4, 2))), "alphas"),
        (lambda: AffineTranscoder().fit(np.ones((4, 2)), np.ones((5, 2))), "rows"),
        (lambda: AffineTranscoder().fit(np.ones((4, 2)), np.ones((4, 2))), "constant"),
        (lambda: AffineTranscoder().predict(np.ones((4, 2))), "not fitted"),
        (lambda: AffineTranscoder().finalize(), "no training"),
        (
            lambda: AffineTranscoder(solver="adam").partial_fit(np.ones((4, 2)), np.ones((4, 2))),
            "ridge",
        ),
        (lambda: AffineTranscoder().fit(np.full((4, 2), np.inf), np.ones((4, 2))), "NaN"),
        (lambda: AffineTranscoder().fit(np.eye(4), np.eye(4), X_val=np.eye(4)), "both"),
    ],
)
def test_bad_input_is_one_clear_error(make, match):
    with pytest.raises(CrosslayerError, match=match):
        make()


def test_predict_checks_the_source_width():
    x, y = _data(100, 10)
    tc = AffineTranscoder().fit(x, y)
    with pytest.raises(CrosslayerError, match="16"):
        tc.predict(np.ones((3, 5)))
