"""crosslayer.validation.check_array: one clear CrosslayerError per bad input, at the edge."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crosslayer.compare import token_determinedness
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import RegressionAccumulator, regression_report
from crosslayer.validation import check_array, check_length, check_pair


def test_a_good_array_gives_its_shape_without_copying() -> None:
    x = np.zeros((5, 3), dtype=np.float32)
    assert check_array("X", x, n_rows=5, n_cols=3, finite=True) == (5, 3)
    assert check_array("X", torch.zeros(4, 2), finite=True) == (4, 2)
    assert check_pair(x, np.ones((5, 7))) == (5, 3, 7)


@pytest.mark.parametrize(
    ("a", "kwargs", "message"),
    [
        (np.zeros(5), {}, r"X must be a 2-D array \[n_tokens, d\], got shape \(5,\)"),
        (np.zeros((2, 3, 4)), {}, r"got shape \(2, 3, 4\)"),
        ([[1.0, 2.0]], {}, "got no shape"),
        (np.zeros((0, 3)), {}, r"X is empty \(shape \(0, 3\)\)"),
        (np.array([[1.0, np.nan]]), {"finite": True}, "X contains NaN or infinite values"),
        (torch.tensor([[np.inf, 1.0]]), {"finite": True}, "X contains NaN or infinite values"),
        (np.zeros((4, 2)), {"n_rows": 5, "like": "Y"}, "Y has 5 rows but X has 4"),
        (np.zeros((4, 2)), {"n_cols": 3, "like": "Y"}, r"Y has 3 columns but X has shape \(4, 2\)"),
    ],
)
def test_each_bad_input_is_one_error_with_a_fix(a: object, kwargs: dict, message: str) -> None:
    with pytest.raises(CrosslayerError, match=message) as e:
        check_array("X", a, **kwargs)
    assert e.value.fix  # the error says how to fix it


def test_nan_passes_unless_asked_for() -> None:
    assert check_array("X", np.array([[np.nan]])) == (1, 1)  # the chunked readers check it


def test_metrics_and_compare_use_the_helper() -> None:
    y = np.random.default_rng(0).normal(size=(6, 2))
    with pytest.raises(CrosslayerError, match="y has 6 rows but y_hat has 5"):
        regression_report(y, y[:5])
    with pytest.raises(
        CrosslayerError, match=r"targets has 2 columns but predictions has shape \(6, 1\)"
    ):
        RegressionAccumulator("cpu").update(y, y[:, :1])
    with pytest.raises(CrosslayerError, match="targets has 6 rows but predictions has 3"):
        RegressionAccumulator("cpu").update(y, y[:3])
    with pytest.raises(CrosslayerError, match="5 token ids for 6 rows of F"):
        token_determinedness(np.arange(5), y)
    with pytest.raises(CrosslayerError, match="F must be a 2-D array"):
        token_determinedness(np.arange(6), y[:, 0])
    assert check_length("token ids", np.arange(6)[:, None], 6, "F").shape == (6,)
