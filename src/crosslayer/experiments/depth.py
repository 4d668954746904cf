"""Depth sweep: how much of every later layer an affine map from one source hook explains.

One pass over the store's train batches accumulates X'X once and X'Y for all targets together
(the targets' columns side by side); one pass over the held-out batches does the same. The
train covariance is eigendecomposed once; each target then gets its own alpha (chosen on
held-out data) and its metrics on both splits, all from the statistics
(:func:`crosslayer.linalg.solve_ridge`), with no further pass over the activations.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from crosslayer.errors import CrosslayerError
from crosslayer.linalg import DEFAULT_ALPHAS, RidgeEigen, SufficientStats, solve_ridge
from crosslayer.metrics import DEFINITIONS

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


@dataclass
class DepthCurve:
    """Per target hook (in the order given): affine predictability from ``source_hook``."""

    source_hook: str
    target_hooks: list[str]
    heldout_explained_variance: list[float]  # primary
    heldout_r2_global_mean: list[float]
    train_explained_variance: list[float]
    train_r2_global_mean: list[float]  # the seed study's measurement
    alpha: list[float]  # relative ridge strength chosen per target
    alpha_criterion: list[str]
    n_train: int
    n_heldout: int
    definitions: dict[str, str] = field(default_factory=lambda: dict(DEFINITIONS))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN stays NaN; json.dumps writes it as NaN)."""
        return asdict(self)


def fit_depth_curve(
    train_batches: Iterable[Mapping[str, np.ndarray]],
    heldout_batches: Iterable[Mapping[str, np.ndarray]],
    source_hook: str,
    target_hooks: Sequence[str],
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    device: str | None = None,
) -> DepthCurve:
    """The sweep over any iterables of ``{hook: [b, d]}`` batches (a store's, or arrays')."""
    targets = list(target_hooks)
    if not targets:
        raise CrosslayerError("no target hooks to sweep", "pass at least one target hook")
    train, heldout = SufficientStats(device), SufficientStats(device)
    widths: list[int] = []
    for stats, batches in ((train, train_batches), (heldout, heldout_batches)):
        for batch in batches:
            missing = [h for h in [source_hook, *targets] if h not in batch]
            if missing:
                raise CrosslayerError(
                    f"batches lack hooks {missing}",
                    "collect the source and every target hook into the store",
                )
            widths = [batch[h].shape[1] for h in targets]
            stats.update(batch[source_hook], np.concatenate([batch[h] for h in targets], axis=1))
    if train.n == 0:
        raise CrosslayerError(
            "the training split is empty", "collect more tokens or lower heldout_frac"
        )
    eig = RidgeEigen(train)
    bounds = np.concatenate([[0], np.cumsum(widths)])
    nan = float("nan")
    rows: dict[str, list[Any]] = {k: [] for k in ("hev", "hgm", "tev", "tgm", "alpha", "crit")}
    for i in range(len(targets)):
        cols = slice(int(bounds[i]), int(bounds[i + 1]))
        val = heldout.outputs(cols) if heldout.n > 1 else None
        sol = solve_ridge(eig, train.outputs(cols), val, np.asarray(alphas, dtype=float))
        held = sol.heldout_report
        rows["hev"].append(held.explained_variance if held else nan)
        rows["hgm"].append(held.r2_global_mean if held else nan)
        rows["tev"].append(sol.train_report.explained_variance)
        rows["tgm"].append(sol.train_report.r2_global_mean)
        rows["alpha"].append(sol.alpha)
        rows["crit"].append(sol.criterion)
    return DepthCurve(
        source_hook,
        targets,
        rows["hev"],
        rows["hgm"],
        rows["tev"],
        rows["tgm"],
        rows["alpha"],
        rows["crit"],
        train.n,
        heldout.n,
    )


def depth_sweep(
    store: Any,
    source_hook: str,
    target_hooks: Sequence[str] | None = None,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    batch_size: int = 4096,
    device: str | None = None,
) -> DepthCurve:
    """R² from ``source_hook`` to each target (default: every ``resid_post`` in the store).

    Reads the store twice (train split, then held-out split) and nothing else.
    """
    available = list(store.hooks)
    if target_hooks is None:
        layers = {h: m.group(1) for h in available if (m := _RESID_POST.match(h))}
        target_hooks = sorted(layers, key=lambda h: int(layers[h]))
    unknown = [h for h in [source_hook, *target_hooks] if h not in available]
    if unknown:
        raise CrosslayerError(
            f"hooks {unknown} are not in the store",
            f"use hooks the store holds: {', '.join(available)}",
        )
    hooks = [source_hook, *target_hooks]

    def batches(split: str) -> Iterable[Mapping[str, np.ndarray]]:
        return store.iter_batches(hooks, split=split, batch_size=batch_size, dtype=np.float32)

    return fit_depth_curve(
        batches("train"),
        batches("heldout"),
        source_hook,
        target_hooks,
        alphas=alphas,
        device=device,
    )
