"""crossfit.context: lagged design rows never cross a context boundary."""

import numpy as np
import pytest

from crosslayer.crossfit import lag_valid, lagged
from crosslayer.errors import CrosslayerError


def _reference(X: np.ndarray, c: np.ndarray, k: int) -> np.ndarray:
    n, d = X.shape
    out = np.zeros((n, (k + 1) * d + k))
    for t in range(n):
        out[t, :d] = X[t]
        for i in range(1, k + 1):
            if t - i >= 0 and c[t - i] == c[t]:
                out[t, i * d : (i + 1) * d] = X[t - i]
                out[t, (k + 1) * d + i - 1] = 1
    return out


@pytest.mark.parametrize("k", [0, 1, 3])
def test_lagged_matches_a_loop(k: int) -> None:
    rng = np.random.default_rng(0)
    c = np.repeat(np.arange(7), rng.integers(1, 6, size=7))
    X = rng.normal(size=(len(c), 4))
    np.testing.assert_allclose(lagged(X, c, k, dtype=np.float64), _reference(X, c, k))


def test_lag_valid_counts_positions_inside_each_context() -> None:
    c = np.array([0, 0, 0, 1, 1])
    assert lag_valid(c, 2).sum(0).tolist() == [3, 1]


def test_lagged_rejects_mismatched_ids() -> None:
    with pytest.raises(CrosslayerError, match="context_ids has 3 entries for 4 rows"):
        lagged(np.zeros((4, 2)), np.zeros(3), 1)
