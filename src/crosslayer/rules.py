"""Rules on settings that more than one stage enforces, each in one place.

A rule lives here when it is checked twice: once up front, when a config is built (so that
a run fails in a second, before any work), and again by the stage that relies on it (so
that library callers get the same error). The module imports nothing heavy: config
validation must not wait for torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from crosslayer.errors import CrosslayerError

MAX_SAE_WIDTH = 2**22


def check_sae_sparsity(arch: str, width: int, target_l0: float | None) -> None:
    """Width in range, ``0 < target_l0 < width``, and an integer k for TopK."""
    if not 1 <= width <= MAX_SAE_WIDTH:
        raise CrosslayerError(f"width {width} is out of range", f"use 1 to {MAX_SAE_WIDTH} latents")
    if target_l0 is not None and not 0 < target_l0 < width:
        raise CrosslayerError(
            f"target L0 {target_l0:g} is out of range for width {width}",
            f"use 0 < target_l0 < {width} (typically 20-150), or a larger width",
        )
    if arch == "topk" and (target_l0 is None or target_l0 != int(target_l0)):
        raise CrosslayerError(
            f"TopK needs an integer target_l0 (its k), got {target_l0}", "pass e.g. target_l0=64"
        )


def check_sae_lr(lr: float, l0_coefficient: float = 1.0) -> None:
    """Adam's learning rate in (0, 1) and a non-negative L0 coefficient."""
    if not 0 < lr < 1 or l0_coefficient < 0:
        raise CrosslayerError(
            f"lr must be in (0, 1) and l0_coefficient >= 0 (got lr {lr:g}, "
            f"l0_coefficient {l0_coefficient:g})",
            "use e.g. lr=3e-3",
        )


def check_steps(total_tokens: int, batch_size: int, what: str = "SAE training") -> None:
    """At least one optimiser step: ``total_tokens >= batch_size``."""
    if total_tokens < batch_size:
        raise CrosslayerError(
            f"{what} has {total_tokens:,} tokens, less than one batch of {batch_size:,}",
            "lower the batch size, or give more tokens or epochs",
        )


def check_alphas(alphas: Sequence[float]) -> None:
    """Ridge strengths: a non-empty list of finite numbers >= 0."""
    try:
        values = [float(a) for a in alphas]
    except (TypeError, ValueError):
        values = []
    if not values or not all(math.isfinite(a) and a >= 0 for a in values):
        raise CrosslayerError(
            f"alphas must be a non-empty list of numbers >= 0, got {alphas!r}",
            "pass e.g. alphas=(1e-6, 1e-4, 1e-2)",
        )
