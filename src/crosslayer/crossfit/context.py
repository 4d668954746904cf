"""Short-context design matrices: the current token's row beside the rows of the k before it.

The model at position t sees only its own context, so a lag never crosses a context boundary:
where ``t - i`` lies in another context (or before the first row) the lagged block is zeros,
and a 0/1 column per lag says so, letting a linear predictor learn a separate offset for
"no token there" instead of reading zeros as an embedding.
"""

from __future__ import annotations

import numpy as np

from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike


def lag_valid(context_ids: ArrayLike, k: int) -> np.ndarray:
    """``[n, k]`` bool: column ``i-1`` is True where row ``t - i`` is in row ``t``'s context.

    Rows must be in context order (a store's order): the rows of one context are contiguous.
    """
    c = np.asarray(context_ids).reshape(-1)
    if k < 0:
        raise CrosslayerError(f"k must be >= 0, got {k}", "pass the number of previous tokens")
    valid = np.zeros((c.size, k), dtype=bool)
    for i in range(1, k + 1):
        valid[i:, i - 1] = c[i:] == c[:-i]
    return valid


def lagged(X: ArrayLike, context_ids: ArrayLike, k: int, dtype: type = np.float32) -> np.ndarray:
    """``[n, (k+1) d + k]``: ``[x_t, x_{t-1}, …, x_{t-k}, present_1, …, present_k]``.

    ``x_{t-i}`` is zeros and ``present_i`` is 0 where row ``t - i`` is not in row ``t``'s
    context (see :func:`lag_valid`). ``k = 0`` returns ``X`` itself (as ``dtype``).
    """
    x = np.asarray(X)
    if x.ndim != 2:
        raise CrosslayerError(
            f"X must be 2-D [n, d], got shape {x.shape}", "pass one row per token"
        )
    n, d = x.shape
    valid = lag_valid(context_ids, k)
    if len(valid) != n:
        raise CrosslayerError(
            f"context_ids has {len(valid)} entries for {n} rows of X", "pass one id per row"
        )
    out = np.zeros((n, (k + 1) * d + k), dtype=dtype)
    out[:, :d] = x
    for i in range(1, k + 1):
        block = out[i:, i * d : (i + 1) * d]
        block[:] = x[:-i]
        block[~valid[i:, i - 1]] = 0
    out[:, (k + 1) * d :] = valid
    return out
