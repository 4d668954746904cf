"""The placebo removal: equal variance removed to the transcoder's, none of it linear in X."""

from __future__ import annotations

import numpy as np
import pytest

from crosslayer.errors import CrosslayerError
from crosslayer.experiments.study_a.placebo import (
    PlaceboRemoval,
    describe_removals,
    fit_placebo,
    linear_signal,
    random_basis,
    removed_share,
    total_variance,
)
from crosslayer.transcoder import AffineTranscoder


def synthetic(n: int, seed: int = 0, p: int = 6, d: int = 16):
    """Y = X A + noise + offset: the X-predictable part is known (X A), ~30% of the variance."""
    rng = np.random.default_rng(seed)
    A = np.random.default_rng(99).normal(size=(p, d)) * 0.3
    X = rng.normal(size=(n, p))
    noise = rng.normal(size=(n, d)) * np.linspace(0.5, 1.5, d)
    Y = X @ A + noise + 3.0
    return X.astype(np.float32), Y.astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    X, Y = synthetic(6000)
    Xh, Yh = synthetic(3000, seed=1)
    ridge = AffineTranscoder().fit(X, Y)
    R, Rh = Y - ridge.predict(X), Yh - ridge.predict(Xh)
    return X, Y, R, Xh, Yh, Rh, ridge


def test_removes_the_transcoders_share_exactly_on_train(fitted) -> None:
    _X, Y, R, _Xh, Yh, Rh, _ = fitted
    placebo = fit_placebo(Y, R, seed=3)
    share_tc = removed_share(Y, R)
    assert 0.2 < share_tc < 0.5  # the synthetic transcoder really removes something
    # measured on the transformed data, not through the formula the fit used
    assert removed_share(Y, placebo.transform(Y, R)) == pytest.approx(share_tc, abs=1e-5)
    assert placebo.removed_share == pytest.approx(share_tc, abs=1e-6)
    # held-out: not fitted there, so only about equal
    assert removed_share(Yh, placebo.transform(Yh, Rh)) == pytest.approx(
        removed_share(Yh, Rh), abs=0.03
    )
    w = placebo.weights
    assert np.all(w[:-1] == 1.0) and 0 < w[-1] <= 1.0
    # the directions are orthonormal
    D = placebo.directions
    np.testing.assert_allclose(D.T @ D, np.eye(D.shape[1]), atol=1e-10)


def test_removed_part_has_no_linear_signal_from_x(fitted) -> None:
    X, Y, R, Xh, Yh, Rh, ridge = fitted
    placebo = fit_placebo(Y, R, seed=3)
    sig = linear_signal(X, placebo.removed(R), Xh, placebo.removed(Rh))
    assert abs(sig["train_ev"]) < 1e-3
    assert sig["heldout_ev"] < 0.01
    # ... whereas projecting Y itself onto the same random directions (the naive placebo)
    # removes X-predictable variance: the test can tell the two apart
    D = placebo.directions
    naive = (Y @ D) @ D.T
    naive_h = (Yh @ D) @ D.T
    assert linear_signal(X, naive, Xh, naive_h)["heldout_ev"] > 0.15
    # the placebo keeps every bit of T(X): the linear signal in Y_placebo is T(X)'s variance
    P, Ph = placebo.transform(Y, R), placebo.transform(Yh, Rh)
    kept = linear_signal(X, P, Xh, Ph)["train_ev"] * total_variance(P)
    assert kept == pytest.approx(total_variance(ridge.predict(X)), rel=1e-2)


def test_seeded_and_saved(tmp_path, fitted) -> None:
    _, Y, R, *_ = fitted
    a, b, c = fit_placebo(Y, R, seed=5), fit_placebo(Y, R, seed=5), fit_placebo(Y, R, seed=6)
    np.testing.assert_array_equal(a.directions, b.directions)
    assert not np.allclose(a.directions[:, 0], c.directions[:, 0])
    a.save(tmp_path / "p.npz")
    back = PlaceboRemoval.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(back.transform(Y, R), a.transform(Y, R))
    assert back.removed_share == a.removed_share


def test_random_basis_is_orthonormal_and_unbiased() -> None:
    Q = random_basis(8, seed=0)
    np.testing.assert_allclose(Q.T @ Q, np.eye(8), atol=1e-12)
    # Haar: E[q q^T] = I/d for the first column, checked over seeds
    first = np.stack([random_basis(4, s)[:, 0] for s in range(4000)])
    np.testing.assert_allclose(first.T @ first / 4000, np.eye(4) / 4, atol=0.02)


def test_too_much_to_remove_is_an_error(fitted) -> None:
    _, Y, R, *_ = fitted
    with pytest.raises(CrosslayerError, match="removable variance"):
        fit_placebo(Y, R, seed=0, removed_variance=1.2 * total_variance(R))
    with pytest.raises(CrosslayerError, match="same"):
        fit_placebo(Y, R[:, :3], seed=0)


def test_describe_removals_tells_a_weak_fit_from_ours(fitted) -> None:
    """The seed's Adam recipe, stood in for by a transcoder shrunk toward 0: it removes less,
    and leaves X-linear signal that ours does not."""
    X, Y, R, Xh, Yh, Rh, ridge = fitted
    weak = lambda x: 0.3 * (ridge.predict(x) - ridge.intercept_) + ridge.intercept_  # noqa: E731
    out = describe_removals(
        (X, Xh), (Y, Yh), {"ours": (R, Rh), "weak": (Y - weak(X), Yh - weak(Xh))}
    )
    assert out["ours"]["removed_share_train"] > out["weak"]["removed_share_train"] + 0.1
    assert abs(out["ours"]["linear_signal_left"]["train_ev"]) < 1e-3
    assert out["weak"]["linear_signal_left"]["heldout_ev"] > 0.1
