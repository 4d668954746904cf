"""Figures to PNG files, for the stages that draw them (study A's plots, emergence's).

It sits below both (it imports only :mod:`crosslayer.fs` and matplotlib), so a stage can
write its figures without importing :mod:`crosslayer.report` and everything the report loads.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from crosslayer import fs


def write_pngs(figures: Mapping[str, Figure], out: str | Path, dpi: int = 110) -> list[str]:
    """Each figure to ``out/<name>.png``, written atomically, and closed; the file names."""
    names = []
    for name, fig in figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        fs.atomic_write_bytes(Path(out) / f"{name}.png", buf.getvalue())
        names.append(f"{name}.png")
    return names
