"""Emergence figures (matplotlib, files only), one panel per SAE.

* ``emergence_heatmap.png``: features x layers, each feature's out-of-fold R² as a share of
  its best, rows sorted by emergence layer (never-predictable features last, grey);
* ``emergence_layers.png``: the distribution of emergence layers per SAE;
* ``emergence_vs.png``: emergence layer against token-determinedness (token-lookup R²) and
  against density.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from crosslayer.plotting import write_pngs

COLORS = {"baseline": "tab:blue", "residual": "tab:orange", "pretrained": "tab:green"}


@dataclass
class Panel:
    """What the figures need of one SAE (scored features only)."""

    hooks: list[str]
    scores: np.ndarray  # [m, L] the emergence metric in excess of chance
    emergence: np.ndarray  # [m] column index, -1: never predictable
    token_r2: np.ndarray  # [m]
    density: np.ndarray  # [m]
    metric: str
    frac: float


def _labels(hooks: list[str]) -> list[str]:
    return ["embed" if h == "hook_embed" else h.split(".")[1] for h in hooks]


def heatmap_figure(panels: Mapping[str, Panel]) -> Figure:
    """Share of each feature's best predictability reached at each layer."""
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 6),
                             squeeze=False)  # fmt: skip
    for ax, (name, p) in zip(axes[0], panels.items(), strict=False):
        best = np.nanmax(np.where(np.isfinite(p.scores), p.scores, -np.inf), axis=1)
        never = p.emergence < 0
        key = np.where(never, len(p.hooks), p.emergence)
        order = np.lexsort((-best, key))
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.clip(p.scores / best[:, None], 0, 1)
        share[never] = np.nan
        img = ax.imshow(share[order], aspect="auto", interpolation="nearest", cmap="viridis",
                        vmin=0, vmax=1)  # fmt: skip
        img.set_cmap(img.cmap.with_extremes(bad="lightgrey"))
        ax.set_xticks(range(len(p.hooks)), _labels(p.hooks), fontsize=7)
        ax.set_xlabel("layer (embed, then blocks.L.hook_resid_post)")
        ax.set_ylabel(f"features, by emergence layer ({len(order):,}; grey: never predictable)")
        ax.set_title(f"{name}: {p.metric} / best {p.metric}", fontsize=9)
        fig.colorbar(img, ax=ax, fraction=0.04, label="share of the feature's best")
    fig.suptitle("Out-of-fold predictability of each feature from each layer; emergence = first "
                 f"layer reaching {p.frac:.0%} of the best", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def layers_figure(panels: Mapping[str, Panel]) -> Figure:
    """Share of each SAE's scored features emerging at each layer (last bar: never)."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(panels))
    for i, (name, p) in enumerate(panels.items()):
        L = len(p.hooks)
        counts = np.bincount(np.where(p.emergence < 0, L, p.emergence), minlength=L + 1)
        share = counts / max(1, counts.sum())
        x = np.arange(L + 1) + (i - (len(panels) - 1) / 2) * width
        ax.bar(x, share, width, color=COLORS.get(name, f"C{i}"),
               label=f"{name} ({counts.sum():,} features)")  # fmt: skip
    first = next(iter(panels.values()), None)
    if first is not None:
        ax.set_xticks(range(len(first.hooks) + 1), [*_labels(first.hooks), "never"], fontsize=7)
    ax.set_xlabel("emergence layer")
    ax.set_ylabel("share of scored features")
    ax.set_title("Where features emerge", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def versus_figure(panels: Mapping[str, Panel]) -> Figure:
    """Emergence layer against token-lookup R² and against density (jittered)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    rng = np.random.default_rng(0)
    for i, (name, p) in enumerate(panels.items()):
        ok = p.emergence >= 0
        y = p.emergence[ok] + rng.uniform(-0.25, 0.25, ok.sum())
        color = COLORS.get(name, f"C{i}")
        axes[0].scatter(p.token_r2[ok], y, s=4, alpha=0.4, color=color, label=name)
        dens = p.density[ok]
        pos = dens > 0
        axes[1].scatter(dens[pos], y[pos], s=4, alpha=0.4, color=color, label=name)
    first = next(iter(panels.values()), None)
    if first is not None:
        axes[0].set_yticks(range(len(first.hooks)), _labels(first.hooks), fontsize=7)
    axes[0].set_xlabel("token-lookup R² (cross-fitted; token-determinedness)")
    axes[0].set_ylabel("emergence layer")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("density (fraction of tokens active)")
    for ax in axes:
        ax.legend(fontsize=7, markerscale=3)
    fig.suptitle("Do token-like and dense features emerge early?", fontsize=10)
    fig.tight_layout()
    return fig


def write_emergence_plots(panels: Mapping[str, Panel], out: str | Path) -> list[str]:
    """The three figures into ``out`` (each PNG written atomically); their file names."""
    figures = {
        "emergence_heatmap": heatmap_figure(panels),
        "emergence_layers": layers_figure(panels),
        "emergence_vs": versus_figure(panels),
    }
    return write_pngs(figures, out)
