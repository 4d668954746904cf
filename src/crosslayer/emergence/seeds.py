"""Seed-level confidence intervals: the unit that varies between runs is the seed.

A seed changes the split, the SAEs and the folds, so a quantity measured once per seed (a
class share, a median over a dictionary's features, a median emergence layer) gets its
interval over seeds: ``mean ± t_{0.975, S-1} · sd / √S`` of the ``S`` per-seed values (``sd``
with ``ddof=1``), cut to the quantity's range when it has one (a share lies in [0, 1]).
Differences between two dictionaries are paired by seed: seed ``k`` of one with seed ``k``
of the other, and the interval is over the per-seed differences.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats


def seed_ci(
    values: Sequence[float | None] | np.ndarray, *, bounds: tuple[float, float] | None = None
) -> dict[str, Any]:
    """Mean and t 95% CI over seeds of one value per seed.

    Returns ``{"n_seeds", "mean", "ci95"}``: ``n_seeds`` the seeds with a finite value (None
    and NaN, e.g. a median over no feature, are left out), ``ci95`` ``[lo, hi]`` cut to
    ``bounds``, or None with a ``note`` when fewer than 2 seeds have a value.
    """
    v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    n_missing = int((~np.isfinite(v)).sum())
    v = v[np.isfinite(v)]
    S = int(v.size)
    out: dict[str, Any] = {"n_seeds": S, "mean": float(v.mean()) if S else None, "ci95": None}
    if S >= 2:
        half = float(stats.t.ppf(0.975, S - 1) * v.std(ddof=1) / np.sqrt(S))
        lo, hi = float(v.mean()) - half, float(v.mean()) + half
        if bounds is not None:
            lo, hi = max(bounds[0], lo), min(bounds[1], hi)
        out["ci95"] = [float(lo), float(hi)]
    else:
        out["note"] = (
            "one seed: no seed-level CI (run more seeds for one)"
            if S == 1
            else "no seed with a value: no mean, no CI"
        )
    if n_missing:
        out["n_missing"] = n_missing
    return out


def paired_difference(
    a: Mapping[int, float | None],
    b: Mapping[int, float | None],
    *,
    bounds: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """``a − b`` paired by seed (``{seed: value}`` each): mean and t 95% CI over seeds.

    Only the seeds where both have a finite value are paired (``seeds`` lists them);
    ``bounds``: the range of the difference (for two shares ``(-1, 1)``).
    """

    def finite(x: float | None) -> bool:
        return x is not None and bool(np.isfinite(x))

    seeds = sorted(s for s in a if s in b and finite(a[s]) and finite(b[s]))
    diffs = [float(a[s]) - float(b[s]) for s in seeds]  # type: ignore[arg-type]
    return {**seed_ci(diffs, bounds=bounds), "seeds": seeds}
