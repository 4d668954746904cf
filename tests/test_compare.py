"""Distribution comparison and token-determinedness against slow numpy / pandas references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from crosslayer.compare import compare_distributions, token_determinedness
from crosslayer.errors import CrosslayerError


def test_summaries_and_tests_match_numpy_and_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.beta(5, 2, size=300), rng.beta(4, 3, size=200)
    a[:3] = np.nan  # NaNs (undefined features) are dropped
    out = compare_distributions(a, b, n_boot=2000, seed=1)
    fa = a[np.isfinite(a)]
    assert out["a"]["n"] == 297 and out["b"]["n"] == 200
    assert out["a"]["mean"] == pytest.approx(fa.mean())
    assert out["a"]["median"] == pytest.approx(np.median(fa))
    assert out["b"]["q25"] == pytest.approx(np.quantile(b, 0.25))
    assert out["a"]["frac_above"] == pytest.approx((fa > 0.8).mean())
    assert out["diff_mean"] == pytest.approx(fa.mean() - b.mean())
    assert out["mannwhitney_p"] == pytest.approx(
        stats.mannwhitneyu(fa, b, alternative="two-sided").pvalue
    )
    # slow reference: a seeded resampling loop, percentile interval
    boot_rng = np.random.default_rng(5)
    diffs = [
        boot_rng.choice(fa, fa.size).mean() - boot_rng.choice(b, b.size).mean() for _ in range(2000)
    ]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    assert out["diff_mean_ci95"][0] == pytest.approx(lo, abs=0.006)
    assert out["diff_mean_ci95"][1] == pytest.approx(hi, abs=0.006)


def test_shift_is_detected_and_no_shift_is_not():
    rng = np.random.default_rng(2)
    base = rng.normal(size=400)
    shifted = compare_distributions(base + 1.0, rng.normal(size=400), n_boot=2000)
    lo, hi = shifted["diff_mean_ci95"]
    assert lo < 1.0 < hi and lo > 0.5 and shifted["mannwhitney_p"] < 1e-10
    same = compare_distributions(base, rng.normal(size=400), n_boot=2000)
    assert same["diff_mean_ci95"][0] < 0 < same["diff_mean_ci95"][1]


def test_token_determinedness_matches_a_pandas_groupby():
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, 30, size=2000)
    per_token = rng.normal(size=(30, 5)) * np.array([0.0, 0.5, 1, 3, 10])
    F = per_token[tokens] + rng.normal(size=(2000, 5))
    ours = token_determinedness(tokens, F, chunk_size=333)
    df = pd.DataFrame(F).assign(tok=tokens)
    for j in range(5):
        means = df.groupby("tok")[j].transform("mean")
        ref = ((means - F[:, j].mean()) ** 2).sum() / ((F[:, j] - F[:, j].mean()) ** 2).sum()
        assert ours[j] == pytest.approx(ref, abs=1e-10)
    assert ours[4] > 0.95 and ours[0] < 0.05


def test_token_determinedness_min_count_and_constant_feature():
    tokens = np.array([0, 0, 1, 1, 2])
    F = np.array([[1.0, 3.0], [2.0, 3.0], [5.0, 3.0], [6.0, 3.0], [100.0, 3.0]])
    eta = token_determinedness(tokens, F, min_count=2)  # token 2 (seen once) left out
    # kept values 1,2,5,6: between = 4·(2)² = 16 (group means 1.5, 5.5 around 3.5), total 17
    assert eta[0] == pytest.approx(16 / 17)
    assert np.isnan(eta[1])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: compare_distributions([1.0], [1.0, 2.0]), "fewer than two"),
        (lambda: compare_distributions([1.0, 2], [1.0, 2.0], n_boot=10), "n_boot"),
        (lambda: token_determinedness(np.zeros(3), np.zeros((4, 2))), "token ids"),
        (lambda: token_determinedness(np.zeros(4), np.zeros((4, 2))), "distinct"),
        (lambda: token_determinedness(np.zeros(4), np.zeros(4)), "2-D"),
    ],
)
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises(CrosslayerError, match=match):
        call()
