"""Feature matching by decoder cosine: Hungarian against brute force, a planted permutation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.study_a.matching import (
    decoder_cosines,
    match_features,
    match_summary,
    matched_change,
)


def test_cosines_against_a_loop() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
    cos = decoder_cosines(a, b)
    for i, j in itertools.product(range(5), range(4)):
        ref = a[i] @ b[j] / np.linalg.norm(a[i]) / np.linalg.norm(b[j])
        assert cos[i, j] == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_assignment_is_the_best_of_every_permutation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_a, n_b = 6, 5
    a, b = rng.normal(size=(n_a, 4)), rng.normal(size=(n_b, 4))
    pairs, cos = match_features(a, b)
    assert pairs.shape == (n_b, 2) and len(set(pairs[:, 0])) == n_b
    full = decoder_cosines(a, b)
    best = max(
        sum(full[i, j] for i, j in zip(rows, range(n_b), strict=True))
        for rows in itertools.permutations(range(n_a), n_b)
    )
    assert cos.sum() == pytest.approx(best, abs=1e-10)
    np.testing.assert_allclose(cos, full[pairs[:, 0], pairs[:, 1]])


def test_recovers_a_planted_permutation_under_noise_and_scaling() -> None:
    rng = np.random.default_rng(1)
    n, d = 200, 32
    a = rng.normal(size=(n, d))
    perm = rng.permutation(n)
    # b's feature perm[i] is a's feature i, rescaled and slightly perturbed
    b = np.empty_like(a)
    b[perm] = a * rng.uniform(0.5, 3.0, size=(n, 1)) + 0.2 * rng.normal(size=(n, d))
    pairs, cos = match_features(a, b)
    np.testing.assert_array_equal(pairs[:, 1], perm[pairs[:, 0]])
    assert cos.min() > 0.9
    # greedy nearest neighbour is not one-to-one in general; here the sign matters too
    _pairs_neg, cos_neg = match_features(a, -b)
    assert cos_neg.max() < 0.9


def test_matched_change_and_summary() -> None:
    pairs = np.array([[0, 2], [1, 0], [2, 1]])
    cos = np.array([0.95, 0.6, 0.8])
    sa = np.array([0.5, 0.4, 0.3])
    sb = np.array([0.1, np.nan, 0.2])  # b's feature 1 unscored
    out = matched_change(pairs, cos, sa, sb, threshold=0.7)
    # above 0.7: (0 -> 2) gives 0.2 - 0.5; (2 -> 1) has no score; (1 -> 0) is below 0.7
    assert out["n_pairs"] == 1 and out["mean_change"] == pytest.approx(-0.3)
    s = match_summary(cos)
    assert s["share_above"]["0.7"] == pytest.approx(2 / 3) and s["cosine_median"] == 0.8


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(CrosslayerError, match="cannot be matched"):
        decoder_cosines(np.zeros((3, 4)), np.zeros((3, 5)))
