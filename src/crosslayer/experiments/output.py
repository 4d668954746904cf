"""Writing a study-B result directory: ``results.json`` plus PNG figures, all or nothing."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from crosslayer.fs import atomic_dir, atomic_write_json, jsonable


def write_results(
    out: str | Path, results: dict[str, Any], figures: Mapping[str, Figure],
    texts: Mapping[str, str] | None = None,
) -> Path:  # fmt: skip
    """Write ``results.json``, ``{name}.png`` per figure and any text files into ``out``,
    atomically (the directory appears complete or not at all)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        atomic_write_json(tmp / "results.json", jsonable(results))
        for name, text in (texts or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        for name, fig in figures.items():
            fig.savefig(tmp / f"{name}.png", dpi=90)
            plt.close(fig)
    return out


def heatmap(
    ax: Any, matrix: np.ndarray, title: str, labels: list[str] | None = None,
    *, diverging: bool = False, colorbar: bool = True,
) -> Any:  # fmt: skip
    """One cosine heatmap on a fixed [-1, 1] scale (differences: symmetric around 0)."""
    m = np.asarray(matrix, np.float64)
    lim = 1.0
    if diverging and np.isfinite(m).any():
        lim = float(np.nanmax(np.abs(m))) or 1.0
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_title(title, fontsize=8)
    if labels is not None and len(labels) <= 24:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
    else:
        ax.tick_params(labelsize=6)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.8)
    return im
