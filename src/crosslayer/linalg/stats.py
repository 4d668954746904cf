"""Sufficient statistics of a least-squares problem, accumulated in float64.

Every fit in crosslayer that is linear in its parameters (the ridge transcoder, the depth
sweep, the per-feature regression probes) needs only n, Σx, Σy, per-dimension Σy², X'X and
X'Y. They are sums over tokens, hence additive: batches stream in with :meth:`update`, ranks
add theirs up (:func:`crosslayer.distributed.all_reduce_stats`), and identical rows can be
merged with a weight (:meth:`SufficientStats.from_weighted_rows`).
"""

from __future__ import annotations

import copy

import torch

from crosslayer.device import resolve_device
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike, as_tensor, check_2d, check_pair, row_chunks


class SufficientStats:
    """Σx, Σy, X'X, X'Y, per-dimension Σy² and n, accumulated in float64.

    ``matmul_dtype=torch.float32`` computes each batch's products in float32 (still summed in
    float64); only safe when the inputs are already centred, as the probes' standardised X is.
    """

    def __init__(
        self, device: str | torch.device | None = None, matmul_dtype: torch.dtype = torch.float64
    ) -> None:
        self.device = resolve_device(device)
        self.matmul_dtype = matmul_dtype
        self.n = 0
        self.sum_x = self.sum_y = self.sum_y2 = self.xtx = self.xty = torch.empty(0)

    @classmethod
    def from_weighted_rows(
        cls,
        x: torch.Tensor,
        counts: torch.Tensor,
        *,
        device: str | torch.device | None = None,
        matmul_dtype: torch.dtype = torch.float64,
    ) -> SufficientStats:
        """Input statistics (n, Σx, X'X) of rows ``x [r, d]``, row ``i`` standing for ``counts[i]``
        identical tokens: the same sums as the unmerged tokens, from ``r`` rows.

        The target statistics come later, per block of targets, with :meth:`with_target_sums`.
        """
        stats = cls(device, matmul_dtype)
        stats.n = int(counts.double().sum().round())
        stats.sum_x = counts.double() @ x.double()
        stats.xtx = ((x * counts[:, None]).T @ x).double()
        return stats

    def allocate(self, d_in: int, d_out: int) -> None:
        """Zero sums for ``d_in`` inputs and ``d_out`` targets (before the first rows arrive)."""

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, dtype=torch.float64, device=self.device)

        self.sum_x, self.sum_y, self.sum_y2 = zeros(d_in), zeros(d_out), zeros(d_out)
        self.xtx, self.xty = zeros(d_in, d_in), zeros(d_in, d_out)

    def update(self, X: ArrayLike, Y: ArrayLike) -> SufficientStats:
        """Add one in-memory batch of row-aligned ``X [b, d_in]`` and ``Y [b, d_out]``."""
        check_pair(X, Y)
        x = as_tensor(X, self.device, self.matmul_dtype)
        y = as_tensor(Y, self.device, self.matmul_dtype)
        if self.n == 0:
            self.allocate(x.shape[1], y.shape[1])
        elif (x.shape[1], y.shape[1]) != (self.sum_x.numel(), self.sum_y.numel()):
            raise CrosslayerError(
                f"batch widths {x.shape[1]}→{y.shape[1]} differ from earlier batches "
                f"{self.sum_x.numel()}→{self.sum_y.numel()}",
                "stream batches of the same source and target hooks",
            )
        self.n += x.shape[0]
        self.sum_x += x.sum(0, dtype=torch.float64)
        self.sum_y += y.sum(0, dtype=torch.float64)
        self.sum_y2 += (y.double() ** 2).sum(0)
        self.xtx += (x.T @ x).double()
        self.xty += (x.T @ y).double()
        return self

    def with_targets(self, X: ArrayLike, Y: ArrayLike) -> SufficientStats:
        """A copy with the target statistics of ``Y`` and this object's input statistics.

        For in-memory data: ``X`` must be the same rows this object accumulated, so that X'X
        is computed once and reused for many blocks of targets (the per-feature probes).
        """
        x = as_tensor(X, self.device, self.matmul_dtype)
        y = as_tensor(Y, self.device, self.matmul_dtype)
        if x.shape[0] != self.n or y.shape[0] != self.n:
            raise CrosslayerError(
                f"with_targets got {y.shape[0]} rows, the statistics hold {self.n}",
                "pass the same rows that were accumulated",
            )
        return self.with_target_sums(
            y.sum(0, dtype=torch.float64), (y.double() ** 2).sum(0), (x.T @ y).double()
        )

    def with_target_sums(
        self, sum_y: torch.Tensor, sum_y2: torch.Tensor, xty: torch.Tensor
    ) -> SufficientStats:
        """A copy with these target sums (Σy, Σy², X'Y) and this object's input statistics.

        For targets summed elsewhere, e.g. over merged rows: X'Y of weighted rows is
        ``x.T @ (Σ of y over the tokens of each row)``.
        """
        if xty.shape != (self.sum_x.numel(), sum_y.numel()) or sum_y2.shape != sum_y.shape:
            raise CrosslayerError(
                f"target sums of shapes {tuple(sum_y.shape)}, {tuple(sum_y2.shape)}, "
                f"{tuple(xty.shape)} do not fit {self.sum_x.numel()} inputs",
                "pass Σy [k], Σy² [k] and X'Y [d_in, k]",
            )
        out = copy.copy(self)
        out.sum_y, out.sum_y2, out.xty = sum_y, sum_y2, xty
        return out

    def outputs(self, cols: slice) -> SufficientStats:
        """The statistics of a block of output columns (shares the input statistics)."""
        out = copy.copy(self)
        out.sum_y, out.sum_y2, out.xty = self.sum_y[cols], self.sum_y2[cols], self.xty[:, cols]
        return out

    def centered(
        self, mean_x: torch.Tensor, mean_y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``Σ(x-μ)(x-μ)ᵀ``, ``Σ(x-μ)(y-ν)ᵀ`` and per-dim ``Σ(y-ν)²`` around given means."""
        sx, n = self.sum_x, self.n
        g = self.xtx - torch.outer(sx, mean_x) - torch.outer(mean_x, sx)
        g += n * torch.outer(mean_x, mean_x)
        h = self.xty - torch.outer(sx, mean_y) - torch.outer(mean_x, self.sum_y)
        h += n * torch.outer(mean_x, mean_y)
        c = self.sum_y2 - 2 * mean_y * self.sum_y + n * mean_y**2
        return g, h, c


def accumulate(
    X: ArrayLike, Y: ArrayLike, stats: SufficientStats, chunk_size: int = 8192
) -> SufficientStats:
    """Stream two row-aligned arrays (memmaps are read ``chunk_size`` rows at a time)."""
    n, _, _ = check_pair(X, Y)
    for rows in row_chunks(n, chunk_size):
        stats.update(X[rows], Y[rows])
    return stats


def load_rows(X: ArrayLike, device: torch.device, chunk_size: int = 8192) -> torch.Tensor:
    """Read a whole (possibly memmapped, float16) array into one float32 tensor, by chunks."""
    n, d = check_2d("X", X)
    out = torch.empty(n, d, dtype=torch.float32, device=device)
    for rows in row_chunks(n, chunk_size):
        out[rows] = as_tensor(X[rows], device)
    return out
