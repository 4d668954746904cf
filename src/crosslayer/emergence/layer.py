"""The emergence layer: where a feature first becomes (almost) as predictable as it gets.

For a feature with scores ``s_0 … s_{L-1}`` over the layers in forward order (``hook_embed``
first, the target last), in excess of chance ``c`` (0 for R², 0.5 for AUROC):

* ``best = max_l (s_l - c)``, the feature's best predictability at or before the target;
* ``best <= 0`` (or no finite score): **never predictable**, no emergence layer;
* otherwise the emergence layer is the first ``l`` with ``s_l - c >= frac · best``.

``frac = 1`` gives the layer of the best score; smaller values the first layer that gets
"most of the way" (default 0.9), which is robust to the small late gains of ridge noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crosslayer.errors import CrosslayerError

CHANCE = {"r2": 0.0, "auroc": 0.5}


@dataclass
class EmergenceLayers:
    """Per feature: the column of its emergence layer (-1: none), its best excess score."""

    index: np.ndarray  # [m] column index into the layers, -1 if never predictable / unscored
    best: np.ndarray  # [m] max over layers of (score - chance); NaN if unscored
    never: np.ndarray  # [m] bool: scored, but best <= 0
    scored: np.ndarray  # [m] bool: at least one finite score
    frac: float
    chance: float

    @property
    def emerged(self) -> np.ndarray:
        return np.asarray(self.index >= 0)


def emergence_layers(scores: np.ndarray, frac: float = 0.9, chance: float = 0.0) -> EmergenceLayers:
    """Emergence layer of every row of ``scores [m, L]`` (layers in forward order)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] < 1:
        raise CrosslayerError(
            f"scores must be [features, layers], got shape {s.shape}",
            "pass one row per feature and one column per layer",
        )
    if not 0.0 < frac <= 1.0:
        raise CrosslayerError(f"frac must be in (0, 1], got {frac}", "pass e.g. frac=0.9")
    excess = s - chance
    scored = np.asarray(np.isfinite(excess).any(1))
    best = np.full(len(s), np.nan)
    best[scored] = np.nanmax(excess[scored], axis=1)
    never = scored & ~(best > 0)
    emerged = scored & ~never
    reach = excess >= frac * best[:, None]  # NaN compares False: a NaN layer never counts
    index = np.where(emerged, reach.argmax(1), -1)
    return EmergenceLayers(index, best, never, scored, frac, chance)
