"""Per-column AUROC from one sort per column; the sorts of a block run on every torch thread.

The sort is the cost: ~20 ns per score on the 2-core boxes here (numpy's sort; torch's is
~20x slower on CPU), so a features x layers matrix of AUROCs spends seconds per layer in it.
numpy releases the GIL while it sorts and searches, so blocks of rows sort in parallel.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch


def auroc_rows(zt: np.ndarray, yt: np.ndarray, threads: int | None = None) -> np.ndarray:
    """AUROC of every row of scores ``zt [c, n]`` for labels ``yt [c, n]`` (bool), ties half.

    Mann-Whitney U from one sort per row: the average rank of each positive among all
    scores, ``(#below + #at-or-below + 1) / 2``, found by binary search in the sorted row.
    NaN for a row with no positive or no negative. ``threads``: workers over blocks of rows
    (default ``torch.get_num_threads()``); the result does not depend on it.
    """
    zt = np.ascontiguousarray(zt)
    yt = np.ascontiguousarray(yt, dtype=bool)
    c, n = zt.shape
    out = np.full(c, np.nan)

    def block(r0: int, r1: int) -> None:
        srt = np.sort(zt[r0:r1], axis=1)
        for j in range(r0, r1):
            v = np.sort(zt[j][yt[j]])  # sorted keys: numpy's search resumes from the last
            p = v.size
            if p == 0 or p == n:
                continue
            s = srt[j - r0]
            lo = np.searchsorted(s, v, side="left")
            # each v is in s, so #at-or-below is lo + 1 unless v has a tie: search only those
            hi = lo + 1
            tied = s[np.minimum(hi, n - 1)] == v
            tied &= hi < n
            if tied.any():
                hi[tied] = np.searchsorted(s, v[tied], side="right")
            u = float((lo + hi + 1).sum()) / 2 - p * (p + 1) / 2
            out[j] = u / (p * (n - p))

    workers = max(1, min(threads or torch.get_num_threads(), c))
    step = max(1, min(64, -(-c // workers)))
    spans = [(r, min(r + step, c)) for r in range(0, c, step)]
    if workers == 1 or len(spans) == 1:
        for r0, r1 in spans:
            block(r0, r1)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda s: block(*s), spans))
    return out


def auroc_of(z: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> np.ndarray:
    """Per column AUROC of scores ``z [n, c]`` for labels ``y [n, c]`` (bool), ties half
    (:func:`auroc_rows` on the transposes)."""
    return auroc_rows(np.asarray(z).T, np.asarray(y).T)


def auroc(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`auroc_of` for torch tensors: per column AUROC of ``z [n, c]`` for ``y [n, c]``,
    float64 (Mann-Whitney U, ties counted half)."""
    return torch.from_numpy(auroc_of(z.detach().cpu().numpy(), y.detach().cpu().numpy() > 0))
