"""Which latents a fact group "has", and the nulls its promotion share is judged against.

A group's raw top-k latents (highest mean code over its prompts) are dominated by latents that
fire on every prompt of the relation (Gemma 3 270M, layer 12: one latent is in 89 of 100
groups' top-10). Contrastive selection ranks latents by the group's mean minus the mean of
the other groups' means, so what is selected is what sets the group apart.

A promotion share (the share of groups whose selected latents promote the group's answer) is
compared with two nulls, each a distribution from many draws with its 95% interval:

* permutation: each group's selected latents scored against another group's answer (a random
  derangement of the groups). It keeps everything about the latents and asks only whether
  they fit *their own* fact. A selection that ignores the group has the same hits against
  every group's answer, so its permutation null equals its observed share.
* density-matched random latents: each selected latent replaced by a random latent of similar
  firing density and decoder norm (its nearest neighbours in log density and log norm, never a
  latent that does not fire). A uniform random latent is mostly dead or rare and its chance of
  promoting a given word is near zero by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from crosslayer.errors import CrosslayerError

Selection = Literal["contrastive", "top"]
SELECTIONS: tuple[Selection, ...] = ("contrastive", "top")


def contrastive_scores(means: torch.Tensor) -> torch.Tensor:
    """``[G, d]``: each group's mean code minus the mean of the other groups' mean codes."""
    n = means.shape[0]
    if n < 2:
        return means.clone()
    others = (means.sum(0, keepdim=True) - means) / (n - 1)
    return means - others


def select_latents(means: torch.Tensor, k: int, how: Selection) -> torch.Tensor:
    """``[G, k]`` latent indices per group: raw top-k of the mean code, or contrastive."""
    if how not in SELECTIONS:
        raise CrosslayerError(f"unknown latent selection {how!r}", "use contrastive or top")
    k = min(k, means.shape[1])
    score = contrastive_scores(means) if how == "contrastive" else means
    return score.topk(k, dim=-1).indices


def hit_matrix(
    selected: torch.Tensor | np.ndarray,
    answers: Sequence[set[int]],
    promotes: Callable[[int], set[int]],
) -> np.ndarray:
    """``H[g, h]``: does any latent selected for group g promote an answer token of group h?
    ``promotes(latent)`` gives the latent's top promoted token ids."""
    sel = np.asarray(selected)
    tops = {int(i): promotes(int(i)) for i in np.unique(sel)}
    out = np.zeros((len(sel), len(answers)), dtype=bool)
    for g, row in enumerate(sel):
        union = set().union(*(tops[int(i)] for i in row))
        out[g] = [bool(union & a) for a in answers]
    return out


@dataclass(frozen=True)
class NullShare:
    """A null distribution of a share: its mean, 95% interval, and the one-sided p of the
    observed share (``(1 + #{null >= observed}) / (1 + n_draws)``)."""

    mean: float
    lo: float
    hi: float
    p: float
    n_draws: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "ci95": [self.lo, self.hi], "p_observed_above": self.p,
                "n_draws": self.n_draws}  # fmt: skip


def summarise_null(null: np.ndarray, observed: float) -> NullShare:
    lo, hi = np.quantile(null, [0.025, 0.975])
    p = (1.0 + float(np.sum(null >= observed - 1e-12))) / (1.0 + len(null))
    return NullShare(float(null.mean()), float(lo), float(hi), p, len(null))


def derangements(n: int, n_draws: int, seed: int = 0) -> np.ndarray:
    """``[n_draws, n]`` random permutations without a fixed point (rejection sampling: about
    1/e of permutations qualify)."""
    if n < 2:
        raise CrosslayerError(f"a permutation null needs 2+ groups, got {n}", "give more groups")
    rng = np.random.default_rng(seed)
    out = np.empty((n_draws, n), dtype=np.int64)
    filled = 0
    while filled < n_draws:
        p = rng.permutation(n)
        if not np.any(p == np.arange(n)):
            out[filled] = p
            filled += 1
    return out


def permutation_null(hits: np.ndarray, n_draws: int = 1000, seed: int = 0) -> np.ndarray:
    """Shares of the permutation null: ``mean_g H[g, π(g)]`` for random derangements π."""
    perms = derangements(hits.shape[0], n_draws, seed)
    return hits[np.arange(hits.shape[0])[None, :], perms].mean(1)


def matched_candidates(
    selected: np.ndarray, density: np.ndarray, norm: np.ndarray, neighbours: int = 20
) -> dict[int, np.ndarray]:
    """For every selected latent, its ``neighbours`` nearest firing latents in standardised
    (log density, log decoder norm), itself excluded."""
    alive = np.flatnonzero(density > 0)
    if len(alive) < 2:
        raise CrosslayerError("fewer than 2 latents fire on these prompts",
                              "check the SAE and its hook")  # fmt: skip
    feats = np.stack([np.log(density[alive]), np.log(np.maximum(norm[alive], 1e-30))], 1)
    scale = feats.std(0)
    feats = feats / np.where(scale > 0, scale, 1.0)
    where = {int(a): j for j, a in enumerate(alive)}
    out: dict[int, np.ndarray] = {}
    for i in np.unique(selected):
        i = int(i)
        ref = feats[where[i]] if i in where else np.array([np.log(1e-30), 0.0])
        dist = np.square(feats - ref).sum(1)
        order = [int(alive[j]) for j in np.argsort(dist, kind="stable") if alive[j] != i]
        out[i] = np.array(order[:neighbours], dtype=np.int64)
    return out


def matched_draws(
    selected: np.ndarray, candidates: dict[int, np.ndarray], n_draws: int, seed: int = 0
) -> np.ndarray:
    """``[n_draws, G, k]`` random stand-ins: each selected latent replaced by one of its
    candidates, drawn uniformly and independently per draw."""
    rng = np.random.default_rng(seed)
    g, k = selected.shape
    out = np.empty((n_draws, g, k), dtype=np.int64)
    for a in range(g):
        for b in range(k):
            pool = candidates[int(selected[a, b])]
            out[:, a, b] = pool[rng.integers(0, len(pool), n_draws)]
    return out


def matched_null(
    draws: np.ndarray, answers: Sequence[set[int]], promotes: Callable[[int], set[int]]
) -> np.ndarray:
    """Shares of the density-matched null: per draw, the share of groups whose stand-in
    latents promote the group's own answer."""
    pool = np.unique(draws)
    hit = {int(i): np.array([bool(promotes(int(i)) & a) for a in answers]) for i in pool}
    table = np.stack([hit[int(i)] for i in pool])  # [pool, G]
    at = np.searchsorted(pool, draws)  # [n, G, k] rows of table
    groups = np.arange(draws.shape[1])[None, :, None]
    return table[at, groups].any(-1).mean(1)


def generic_latents(selected: np.ndarray, min_share: float = 0.5) -> list[dict[str, int]]:
    """Latents selected for more than ``min_share`` of the groups, most frequent first."""
    ids, counts = np.unique(np.asarray(selected), return_counts=True)
    keep = counts > min_share * len(selected)
    order = np.argsort(-counts[keep], kind="stable")
    return [{"latent": int(ids[keep][j]), "n_groups": int(counts[keep][j])} for j in order]


def bootstrap_share(flags: np.ndarray, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of a share over groups (the unit that varies)."""
    rng = np.random.default_rng(seed)
    f = np.asarray(flags, dtype=np.float64)
    boots = f[rng.integers(0, len(f), (n_boot, len(f)))].mean(1)
    return [float(x) for x in np.quantile(boots, [0.025, 0.975])]
