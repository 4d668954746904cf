"""Images for the report: PNG files and matplotlib figures as ``data:`` URIs (no network)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def png_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def file_uri(path: Path) -> str:
    """A PNG file embedded as a data URI."""
    return png_uri(path.read_bytes())


def figure_uri(fig: Figure, dpi: int = 80) -> str:
    """A matplotlib figure embedded as a data URI (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return png_uri(buf.getvalue())


def activation_histogram(acts: np.ndarray, density: float, edges: list[float] | None = None) -> str:
    """SAE-vis style histogram of a latent's non-zero activations over the store's tokens;
    ``edges`` (the dashboard's quantile bands) are drawn as dashed lines."""
    fig, ax = plt.subplots(figsize=(3.6, 1.6))
    active = acts[acts > 0]
    if active.size:
        ax.hist(active, bins=min(40, max(5, active.size // 4)), color="tab:orange")
    for edge in (edges or [])[1:-1]:
        ax.axvline(edge, color="grey", lw=0.8, ls="--")
    ax.set_title(f"activation > 0 on {density:.3%} of {acts.size:,} tokens", fontsize=7)
    ax.set_xlabel("activation", fontsize=7)
    ax.tick_params(labelsize=6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return figure_uri(fig)
