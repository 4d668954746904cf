"""How well a prediction ``y_hat`` of a layer matches the layer ``y``: streaming and on arrays.

Every metric is defined in ``docs/metrics.md`` and in :data:`DEFINITIONS`, which result files
carry beside the numbers. In short, with ``y`` of shape ``[n_tokens, d]``:

* ``explained_variance`` (primary): ``1 - Σ_ij (y_ij - ŷ_ij)² / Σ_ij (y_ij - ȳ_j)²`` with
  ``ȳ_j`` the per-dimension mean. This is SAELens's explained variance and equals scikit-learn's
  ``r2_score(..., multioutput="variance_weighted")``.
* ``r2_per_dim``: ``1 - Σ_i (y_ij - ŷ_ij)² / Σ_i (y_ij - ȳ_j)²`` for each ``j``.
* ``r2_global_mean``: the seed study's R², ``1 - Σ_ij (y_ij - ŷ_ij)² / Σ_ij (y_ij - ȳ)²`` with
  ``ȳ`` ONE scalar mean over all tokens and dimensions. A few huge-magnitude dimensions
  dominate its denominator, which inflates it; it is reported only for comparison.
* ``cosine``: mean over tokens of ``cos(y_i, ŷ_i)``; ``mse``: ``mean_ij (y_ij - ŷ_ij)²``.

Sums are accumulated in float64 so that the per-dimension variance (a difference of two large
sums when a dimension has a large mean) keeps its precision over many batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError
from crosslayer.validation import ArrayLike as ArrayLike  # re-exported: estimators import it
from crosslayer.validation import check_array
from crosslayer.validation import check_pair as check_pair

DEFINITIONS: dict[str, str] = {
    "explained_variance": "1 - sum_ij (y-yhat)^2 / sum_ij (y_ij - mean_j)^2; per-dimension means "
    "(SAELens; sklearn r2_score multioutput='variance_weighted')",
    "r2_global_mean": "1 - sum_ij (y-yhat)^2 / sum_ij (y_ij - m)^2 with m one scalar mean over all "
    "tokens and dimensions (the seed study's R^2)",
    "r2_per_dim": "per dimension j: 1 - sum_i (y_ij-yhat_ij)^2 / sum_i (y_ij - mean_j)^2 "
    "(NaN for a constant dimension)",
    "cosine": "mean over tokens of cos(y_i, yhat_i)",
    "mse": "mean over tokens and dimensions of (y_ij - yhat_ij)^2",
}


def as_tensor(
    a: ArrayLike, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """One chunk of data as a finite tensor on ``device`` (float16 input is widened here)."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
    t = t.to(device=device, dtype=dtype)
    if not torch.isfinite(t).all():
        raise CrosslayerError(
            "the data contain NaN or infinite values",
            "remove or re-collect the non-finite activations before fitting",
        )
    return t


def check_2d(name: str, a: ArrayLike) -> tuple[int, int]:
    """Validate once at the edge that ``a`` is a 2-D array with rows; returns its shape."""
    return check_array(name, a)


def row_chunks(n: int, chunk_size: int) -> Iterator[slice]:
    """Row slices of at most ``chunk_size``, so that memmaps are read a block at a time."""
    for start in range(0, n, chunk_size):
        yield slice(start, min(start + chunk_size, n))


@dataclass
class RegressionReport:
    """Metrics of one prediction; see :data:`DEFINITIONS`."""

    n_tokens: int
    explained_variance: float
    r2_global_mean: float
    r2_per_dim: np.ndarray
    cosine: float
    mse: float

    def summary(self) -> dict[str, Any]:
        """JSON-able scalars plus quartiles of the per-dimension R², each with its definition."""
        q = (
            np.nanpercentile(self.r2_per_dim, [0, 25, 50, 75, 100])
            if np.isfinite(self.r2_per_dim).any()
            else [float("nan")] * 5
        )
        return {
            "n_tokens": self.n_tokens,
            "explained_variance": self.explained_variance,
            "r2_global_mean": self.r2_global_mean,
            "r2_per_dim_quartiles": dict(
                zip(["min", "q25", "median", "q75", "max"], [float(v) for v in q], strict=True)
            ),
            "cosine": self.cosine,
            "mse": self.mse,
            "definitions": DEFINITIONS,
        }


def report_from_sums(
    n: int,
    sum_y: torch.Tensor,
    sum_y2: torch.Tensor,
    ss_res: torch.Tensor,
    cos_sum: float = float("nan"),
) -> RegressionReport:
    """Build a report from per-dimension sums Σy, Σy², Σ(y-ŷ)² over ``n`` tokens (float64)."""
    ss_tot = sum_y2 - sum_y**2 / n  # around per-dimension means
    total = float(sum_y2.sum() - sum_y.sum() ** 2 / (n * sum_y.numel()))  # around one scalar
    res = float(ss_res.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        per_dim = 1.0 - ss_res.cpu().numpy() / np.where(
            ss_tot.cpu().numpy() > 0, ss_tot.cpu().numpy(), np.nan
        )
    return RegressionReport(
        n_tokens=n,
        explained_variance=1.0 - res / float(ss_tot.sum()),
        r2_global_mean=1.0 - res / total,
        r2_per_dim=per_dim,
        cosine=cos_sum / n,
        mse=res / (n * sum_y.numel()),
    )


class RegressionAccumulator:
    """Streaming metrics: call :meth:`update` on each batch, then :meth:`result`."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = resolve_device(device)
        self.n = 0
        self._sums: list[torch.Tensor] | None = None  # Σy, Σy², Σ(y-ŷ)² per dimension
        self._cos = 0.0

    def update(self, y: ArrayLike, y_hat: ArrayLike) -> None:
        """Add one batch of targets ``y`` and predictions ``y_hat`` (same shape)."""
        y64 = as_tensor(y, self.device, torch.float64)
        p64 = as_tensor(y_hat, self.device, torch.float64)
        n, d = check_array("targets", y64)
        check_array("predictions", p64, n_rows=n, n_cols=d, like="targets")
        batch = [y64.sum(0), (y64**2).sum(0), ((y64 - p64) ** 2).sum(0)]
        if self._sums is None:
            self._sums = batch
        elif batch[0].shape != self._sums[0].shape:
            raise CrosslayerError(
                "batches have different numbers of dimensions",
                "pass batches of the same layer to one accumulator",
            )
        else:
            self._sums = [s + b for s, b in zip(self._sums, batch, strict=True)]
        self._cos += float(torch.nn.functional.cosine_similarity(y64, p64, dim=1).sum())
        self.n += y64.shape[0]

    def result(self) -> RegressionReport:
        """The metrics over every token seen so far (at least two are needed)."""
        if self._sums is None or self.n < 2:
            raise CrosslayerError(
                "fewer than two tokens were scored",
                "pass at least two tokens to compute a variance",
            )
        return report_from_sums(self.n, self._sums[0], self._sums[1], self._sums[2], self._cos)


def regression_report(
    y: ArrayLike,
    y_hat: ArrayLike,
    *,
    chunk_size: int = 8192,
    device: str | torch.device | None = None,
) -> RegressionReport:
    """All metrics of ``y_hat`` against ``y`` (arrays, read ``chunk_size`` rows at a time)."""
    n, _, _ = check_pair(y, y_hat, ("y", "y_hat"))
    acc = RegressionAccumulator(device)
    for rows in row_chunks(n, chunk_size):
        acc.update(y[rows], y_hat[rows])
    return acc.result()


def explained_variance(y: ArrayLike, y_hat: ArrayLike) -> float:
    """SAELens explained variance around per-dimension means (see module docstring)."""
    return regression_report(y, y_hat).explained_variance


def r2_global_mean(y: ArrayLike, y_hat: ArrayLike) -> float:
    """The seed study's R², with one global scalar mean in the denominator."""
    return regression_report(y, y_hat).r2_global_mean


def r2_per_dim(y: ArrayLike, y_hat: ArrayLike) -> np.ndarray:
    """R² of each output dimension, shape ``[d]``."""
    return regression_report(y, y_hat).r2_per_dim


def sst_about_pooled_mean(n: Any, sum_y: Any, sum_y2: Any) -> Any:
    """Per group (e.g. document) ``Σ_{i∈g} (y_i - ȳ)²`` about the mean ȳ of all groups pooled,
    from ``n [G]``, ``sum_y``, ``sum_y2`` ``[G, m]`` (numpy arrays or torch tensors).

    A document bootstrap weights these rows by how often each document was drawn and keeps
    ȳ fixed, as it keeps the out-of-fold predictions: then a resample's R² is the estimate's
    own formula (re-centring on each resample's mean would bias it below the estimate)."""
    mu = sum_y.sum(0) / max(float(n.sum()), 1.0)
    return sum_y2 - 2 * mu * sum_y + n[:, None] * mu**2


def format_p(p: float | None, relation: bool = False) -> str:
    """A p-value as text: three significant digits, scientific below 1e-3, and ``< 1e-300``
    where the test's p underflowed to 0 (it is then not 0, only below double precision).
    ``relation``: prefixed by ``= `` or ``< `` (for "p = 0.03", "p < 1e-300")."""
    if p is None or not np.isfinite(p):
        return "–"
    if p <= 0.0:
        return "< 1e-300"
    text = f"{p:.1e}" if p < 1e-3 else f"{p:.3g}"
    return f"= {text}" if relation else text


def colsum(x: torch.Tensor, group: int = 64) -> torch.Tensor:
    """Column sums of ``x [n, ...]`` in float64: float32 sums of ``group`` rows, then float64.

    Relative error ~``group`` float32 ulps at worst (2e-8 to 5e-8 measured on the probes'
    shapes, against a float32 sum's 1e-7 to 2e-7), and 4-10x faster on CPU than
    ``x.sum(0, dtype=torch.float64)``, whose casting
    reduction is the slow path (benchmarks/results/crossfit_real.md). The primitive of every
    float64 column sum in the cross-fitted fits and the ridge paths."""
    if x.dtype == torch.float64:
        return x.sum(0)
    n = x.shape[0]
    m = n - n % group
    out = x[:m].reshape(m // group, group, *x.shape[1:]).sum(1).double().sum(0)
    return out + x[m:].double().sum(0) if m < n else out
