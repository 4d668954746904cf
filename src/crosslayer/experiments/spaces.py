"""Representation spaces of study B: raw, centred, standardised (and SAE codes, a separate kind).

Gemma's residuals share one dominant direction: at most blocks the corpus mean carries most of
every token's squared norm, so a raw cosine between two tokens is near 1 whatever they are and a
raw cosine *difference* mostly measures how much of that direction each vector carries. Study B's
measures are therefore computed in a space:

- ``raw``: the vectors as read (the seed's choice, kept for comparison);
- ``centred``: minus the layer's corpus mean, from an activation store when one is given, else
  from the items' own tokens (BOS left out: its norm is outsized, and stores never hold it);
- ``standardised``: centred and each dimension divided by its sd (the same source), so that a
  few massive dimensions do not decide the cosine.

SAE codes (``reps.sequence_reps`` kind ``"sae"``) take the same spaces, with their own moments.
Every transform is affine per dimension, so the transform of a mean over tokens is the mean of the
transformed tokens: an answer's mean vector can be moved into a space after it was averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crosslayer.errors import CrosslayerError
from crosslayer.stage_configs import DEFAULT_SPACES, Space

SPACES: tuple[Space, ...] = ("raw", "centred", "standardised")
__all__ = ["DEFAULT_SPACES", "SPACES", "MomentAccumulator", "Moments", "Space", "check_spaces",
           "moments_of", "sae_encoder", "store_moments"]  # fmt: skip


def check_spaces(spaces: Sequence[str]) -> list[Space]:
    """Distinct known space names, in the order given (the first is the headline)."""
    out = [str(s) for s in spaces]
    bad = [s for s in out if s not in SPACES]
    if bad or not out or len(set(out)) != len(out):
        raise CrosslayerError(
            f"spaces {out} invalid", f"give distinct spaces from {', '.join(SPACES)}"
        )
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Moments:
    """Per-dimension mean and sd of one layer (one kind), and where they come from."""

    mean: np.ndarray  # [d] float64
    sd: np.ndarray  # [d] float64, population sd
    n_tokens: int
    source: str  # "store" or "items"
    mean_norm_share: float  # ||mean||^2 / mean ||x||^2: how much of a token the mean carries

    def transform(self, x: torch.Tensor | np.ndarray, space: str) -> np.ndarray:
        """``x`` [..., d] in ``space`` (float64)."""
        arr = np.asarray(torch.as_tensor(x).double().numpy() if torch.is_tensor(x) else x,
                         np.float64)  # fmt: skip
        if space == "raw":
            return arr
        if space == "centred":
            return arr - self.mean
        if space == "standardised":
            # a dimension with no spread (a dead SAE latent) is 0 after centring; keep it 0
            return (arr - self.mean) / np.where(self.sd > 0, self.sd, 1.0)
        raise CrosslayerError(f"unknown space {space!r}", f"use one of {', '.join(SPACES)}")

    def to_dict(self) -> dict[str, Any]:
        var = self.sd**2
        order = np.argsort(var)[::-1]
        total = float(var.sum())
        return {
            "source": self.source,
            "n_tokens": self.n_tokens,
            "mean_norm_share": self.mean_norm_share,
            "top_dims": [int(i) for i in order[:3]],
            "top1_variance_share": float(var[order[0]] / total) if total > 0 else float("nan"),
            "top3_variance_share": float(var[order[:3]].sum() / total)
            if total > 0
            else float("nan"),
        }


class MomentAccumulator:
    """Streaming float64 sums of rows, for a mean and sd over many tokens."""

    def __init__(self) -> None:
        self.n = 0
        self.s: np.ndarray | None = None
        self.s2: np.ndarray | None = None
        self.norm2 = 0.0

    def add(self, rows: torch.Tensor | np.ndarray) -> None:
        x = np.asarray(torch.as_tensor(rows).double().numpy() if torch.is_tensor(rows) else rows,
                       np.float64).reshape(-1, np.shape(rows)[-1])  # fmt: skip
        if self.s is None or self.s2 is None:
            self.s, self.s2 = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        self.n += len(x)
        self.s += x.sum(0)
        self.s2 += (x * x).sum(0)
        self.norm2 += float((x * x).sum())

    def moments(self, source: str) -> Moments:
        if self.n == 0 or self.s is None or self.s2 is None:
            raise CrosslayerError("no tokens to compute a layer mean from", "give real text")
        mean = self.s / self.n
        var = np.maximum(self.s2 / self.n - mean**2, 0.0)
        share = float(mean @ mean / (self.norm2 / self.n)) if self.norm2 > 0 else float("nan")
        return Moments(mean, np.sqrt(var), self.n, source, share)


def moments_of(x: torch.Tensor | np.ndarray, source: str = "items") -> Moments:
    """Moments of the rows of ``x`` [n, d]."""
    acc = MomentAccumulator()
    acc.add(x)
    return acc.moments(source)


def store_moments(
    store: Any,
    hook: str,
    *,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk: int = 4096,
) -> Moments:
    """Moments of ``hook`` over every token of an activation store (stores hold no BOS);
    with ``encode`` (an SAE's encoder) the moments of its codes of those rows."""
    acts = store.activations(hook)
    acc = MomentAccumulator()
    for start in range(0, len(store.tokens), chunk):
        x = torch.as_tensor(np.asarray(acts[start : start + chunk], np.float32))
        if encode is not None:
            with torch.inference_mode():
                x = encode(x).float().cpu()
        acc.add(x)
    return acc.moments("store")


def sae_encoder(sae: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``encode`` for :func:`store_moments`: an SAE's codes of store rows, on its device."""

    def encode(x: torch.Tensor) -> torch.Tensor:
        return sae.encode(x.to(sae.device, sae.dtype))  # type: ignore[no-any-return]

    return encode
