"""Metrics against scikit-learn and float64 numpy references on random data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import r2_score

from crosslayer.errors import CrosslayerError
from crosslayer.metrics import (
    RegressionAccumulator,
    explained_variance,
    r2_global_mean,
    r2_per_dim,
    regression_report,
)


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(500, 12)) * rng.uniform(0.1, 5, size=12) + rng.normal(size=12) * 10
    y_hat = y + rng.normal(size=y.shape) * 2
    return y, y_hat


def test_explained_variance_is_sklearn_variance_weighted_r2(pair):
    y, y_hat = pair
    expected = r2_score(y, y_hat, multioutput="variance_weighted")
    assert explained_variance(y, y_hat) == pytest.approx(expected, abs=1e-10)


def test_r2_per_dim_is_sklearn_raw_values(pair):
    y, y_hat = pair
    np.testing.assert_allclose(
        r2_per_dim(y, y_hat), r2_score(y, y_hat, multioutput="raw_values"), atol=1e-10
    )


def test_global_mean_r2_and_token_metrics_match_numpy(pair):
    y, y_hat = pair
    rep = regression_report(y, y_hat, chunk_size=64)  # several chunks
    ss_res = ((y - y_hat) ** 2).sum()
    assert rep.r2_global_mean == pytest.approx(1 - ss_res / ((y - y.mean()) ** 2).sum(), abs=1e-10)
    cos = (y * y_hat).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(y_hat, axis=1)
    assert rep.cosine == pytest.approx(cos.mean(), abs=1e-10)
    assert rep.mse == pytest.approx(((y - y_hat) ** 2).mean(), rel=1e-10)
    assert rep.n_tokens == 500
    assert r2_global_mean(y, y_hat) == pytest.approx(rep.r2_global_mean, abs=1e-12)


def test_global_mean_r2_is_inflated_by_one_huge_dimension():
    """The seed study's R² rewards predicting a big offset dimension; ours does not."""
    rng = np.random.default_rng(1)
    y = rng.normal(size=(1000, 8))
    y[:, 0] = 300 + rng.normal(size=1000)  # Gemma-like: a huge mean, unit variance
    y_hat = np.zeros_like(y)
    y_hat[:, 0] = y[:, 0]  # perfect on it, nothing elsewhere
    assert r2_global_mean(y, y_hat) > 0.99
    # around per-dimension means the 7 unpredicted dims are 7/8 of the variance
    assert explained_variance(y, y_hat) == pytest.approx(1 / 8, abs=0.02)
    assert np.nanmedian(r2_per_dim(y, y_hat)) < 0


def test_streaming_equals_one_shot_and_float16_is_widened(pair):
    y, y_hat = pair
    acc = RegressionAccumulator("cpu")
    for i in range(0, 500, 77):
        acc.update(y[i : i + 77].astype(np.float16), y_hat[i : i + 77].astype(np.float16))
    y16, p16 = y.astype(np.float16).astype(np.float64), y_hat.astype(np.float16).astype(np.float64)
    assert acc.result().explained_variance == pytest.approx(
        r2_score(y16, p16, multioutput="variance_weighted"), abs=1e-9
    )


def test_constant_dimension_gives_nan_not_a_crash():
    y = np.ones((10, 2))
    y[:, 1] = np.arange(10)
    assert np.isnan(r2_per_dim(y, y)[0]) and r2_per_dim(y, y)[1] == 1.0


@pytest.mark.parametrize(
    ("y", "y_hat", "match"),
    [
        (np.zeros((5, 3)), np.zeros((4, 3)), "rows"),
        (np.zeros(5), np.zeros(5), "2-D"),
        (np.array([[np.nan, 1.0], [1.0, 2.0]]), np.zeros((2, 2)), "NaN"),
        (np.zeros((1, 3)), np.zeros((1, 3)), "fewer than two"),
        (np.zeros((4, 3)), np.zeros((4, 2)), "rows|shape"),
    ],
)
def test_bad_input_is_one_clear_error(y, y_hat, match):
    with pytest.raises(CrosslayerError, match=match):
        regression_report(y, y_hat)


def test_p_values_are_printed_with_sensible_precision() -> None:
    from crosslayer.metrics import format_p

    assert format_p(0.0) == "< 1e-300"  # underflowed: below double precision, not zero
    assert format_p(0.0, relation=True) == "< 1e-300"
    assert format_p(8.8e-271) == "8.8e-271"
    assert format_p(0.0312) == "0.0312" and format_p(0.0312, relation=True) == "= 0.0312"
    assert format_p(float("nan")) == "–" and format_p(None) == "–"
