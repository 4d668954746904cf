"""Stage 7b: baseline vs residual SAE, every metric's two distributions compared."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from crosslayer.compare import compare_distributions
from crosslayer.experiments.study_a.run import Run, nan_array


def compare_saes(run: Run, features: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Baseline vs residual: every metric's two distributions, and the study's protocol."""
    out: dict[str, Any] = {"headline_metric": run.cfg.analysis.metric}
    a, b = features["baseline"], features["residual"]
    for metric in ("balanced_accuracy", "auroc", "r2"):
        out[metric] = _compare(
            compare_distributions,
            nan_array(a["features"][metric]),
            nan_array(b["features"][metric]),
            run,
        )
    if a["study_protocol"] and b["study_protocol"]:
        out["study_protocol_accuracy"] = _compare(
            compare_distributions,
            nan_array(a["study_protocol"]["accuracy"]),
            nan_array(b["study_protocol"]["accuracy"]),
            run,
        )
    return out


def _compare(fn: Callable[..., Any], a: np.ndarray, b: np.ndarray, run: Run) -> dict[str, Any]:
    """``fn`` (compare_distributions) with its "a"/"b" named baseline/residual."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return {
            "baseline": {"n": int(a.size)},
            "residual": {"n": int(b.size)},
            "note": "fewer than two scored features in a group: no comparison",
        }
    res = dict(fn(a, b, n_boot=run.cfg.analysis.n_bootstrap, seed=run.cfg.seed))
    res["baseline"], res["residual"] = res.pop("a"), res.pop("b")
    res["difference"] = "baseline - residual"
    return res
