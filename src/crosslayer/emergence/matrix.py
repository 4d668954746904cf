"""The emergence matrix: every feature's out-of-fold predictability from every layer.

For each layer (``hook_embed`` and every ``blocks.L.hook_resid_post`` up to the target) one
:class:`~crosslayer.crossfit.CrossFitRidge` fits all scorable features at once: one
eigendecomposition per training set of the nested CV serves every feature and every alpha,
alpha is chosen per feature and fold by grouped inner CV, and every token is predicted by a
probe that never saw its document. Two scores per (feature, layer): the pooled out-of-fold
R², and the AUROC of the out-of-fold ridge prediction against the feature being active
(> 0), made inside the ridge's fit. Features that fail the minimum-positives rule are not
fitted: their rows are NaN and their number is counted per reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from crosslayer.crossfit import CrossFitRidge, check_folds, count_positives
from crosslayer.crossfit.stats import FoldTargets, SparseColumns, as_columns
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike, check_2d, row_chunks
from crosslayer.model.hooks import hook_depth, parse_hook

# One alpha per decade where real features choose them: the matrix fits (layers x features)
# probes, and the grid was set when the inner CV cost one product per alpha (the partial-
# fraction path now takes one for the grid; the per-feature scores use 17 values over 1e-6 ...
# 1e2). Against the 9 decades 1e-6 ... 1e2, on 2,569 real features from 3
# layers of a default run, out-of-fold R² moved by at most 7.5e-3 (99th percentile 1.7e-4,
# mean -4e-6) and AUROC by at most 3.2e-3 (benchmarks/results/emergence.md).
EMERGENCE_ALPHAS: tuple[float, ...] = (1e-4, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass
class EmergenceMatrix:
    """Features x layers scores; rows of features that were not scored are NaN."""

    hooks: list[str]  # columns, in forward order
    r2: np.ndarray  # [m, L] pooled out-of-fold ridge R²
    auroc: np.ndarray  # [m, L] AUROC of the out-of-fold ridge prediction vs (f > 0)
    alpha: np.ndarray  # [m, L] median over outer folds of the chosen relative alpha
    n_pos: np.ndarray  # [m] active tokens (each scored once)
    status: np.ndarray  # [m] "ok" or the first reason of the minimum-positives rule
    n_tokens: int
    n_folds: int
    excluded: dict[str, int] = field(default_factory=dict)

    @property
    def scorable(self) -> np.ndarray:
        return np.asarray(self.status == "ok")

    @property
    def layers(self) -> np.ndarray:
        """Block index of each column: ``L`` for ``blocks.L.*``, -1 for ``hook_embed``."""
        return np.array([_block(h) for h in self.hooks])

    def scores(self, metric: str) -> np.ndarray:
        if metric not in ("r2", "auroc"):
            raise CrosslayerError(f"unknown metric {metric!r}", "use r2 or auroc")
        return self.r2 if metric == "r2" else self.auroc


def _block(hook: str) -> int:
    layer = parse_hook(hook).layer
    return -1 if layer is None else int(layer)


def emergence_matrix(
    layers: Mapping[str, ArrayLike],
    F: ArrayLike,
    fold_ids: ArrayLike,
    *,
    alphas: tuple[float, ...] = EMERGENCE_ALPHAS,
    min_pos_fit: int = 100,
    min_pos_score: int = 20,
    feature_chunk: int = 512,
    cache_bytes: int = 2 << 30,
    path: str = "fractions",
    path_dtype: str = "float64",
    device: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> EmergenceMatrix:
    """Out-of-fold ridge R² and AUROC of every scorable feature from every layer.

    ``layers``: hook name -> activations ``[n, d]`` (arrays or memmapped store arrays), the
    same ``n`` rows as ``F [n, m]`` (sparse or dense feature activations); ``fold_ids [n]``
    from :func:`crosslayer.crossfit.grouped_folds`. Columns are sorted into forward order.
    ``cache_bytes``: F's scored columns are prepared once for all layers
    (:class:`~crosslayer.crossfit.stats.FoldTargets`) when ``n x m x 5`` bytes fit in it.
    ``path``, ``path_dtype``: :class:`~crosslayer.crossfit.CrossFitRidge`'s inner-CV path.
    """
    if not layers:
        raise CrosslayerError("no layers given", "pass {hook name: activations [n, d]}")
    hooks = sorted(layers, key=hook_depth)  # also rejects names that are not hooks
    blocks = as_columns(F)
    n, m = check_2d("F", blocks)
    for h in hooks:
        rows, _ = check_2d(h, layers[h])
        if rows != n:
            raise CrosslayerError(
                f"layer {h} has {rows} rows but F has {n}",
                "pass every layer's activations for the same tokens as F",
            )
    folds, K = check_folds(fold_ids, n)
    counts = count_positives(blocks, folds, min_fit=min_pos_fit, min_score=min_pos_score)
    idx = np.flatnonzero(counts.scorable)
    L = len(hooks)
    r2, auc, alpha = (np.full((m, L), np.nan) for _ in range(3))
    if idx.size:
        sub: SparseColumns | np.ndarray | FoldTargets = _columns(blocks, idx)
        # the features are densified, sorted by fold and summed once for all layers when
        # they fit in memory (n x m float32 and bools), else a block at a time per layer
        if n * idx.size * 5 <= cache_bytes:
            sub = FoldTargets(sub, folds, feature_chunk=feature_chunk, threshold=0.0,
                              device=device)  # fmt: skip
        for li, hook in enumerate(hooks):
            if progress is not None:
                progress(f"emergence: {idx.size:,} features from {hook} ({li + 1}/{L})")
            ridge = CrossFitRidge(
                alphas,
                feature_chunk=feature_chunk,
                path=path,
                path_dtype=path_dtype,
                active_threshold=0.0,
                device=device,
            )
            ridge.fit(layers[hook], sub, folds)
            r2[idx, li] = ridge.r2_
            alpha[idx, li] = np.median(ridge.alpha_, axis=0)
            auc[idx, li] = ridge.auroc_
    return EmergenceMatrix(
        hooks, r2, auc, alpha, counts.n_pos, counts.status, n, K, dict(counts.excluded)
    )


def _columns(blocks: SparseColumns | np.ndarray, idx: np.ndarray) -> SparseColumns | np.ndarray:
    if isinstance(blocks, SparseColumns):
        return SparseColumns(blocks.csc[:, idx])
    return np.ascontiguousarray(blocks[:, idx])


def _float32(X: ArrayLike) -> np.ndarray:
    n, d = check_2d("X", X)
    out = np.empty((n, d), dtype=np.float32)
    for r in row_chunks(n, 8192):
        out[r] = np.asarray(X[r], dtype=np.float32)
    return out
