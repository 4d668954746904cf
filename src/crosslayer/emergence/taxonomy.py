"""A taxonomy of features from measured quantities, all cross-fitted on the run's folds.

Three scores per feature, each out of fold:

* ``token_r2``: the token-lookup R² (:func:`crosslayer.crossfit.token_lookup_r2`): how much
  of the feature the current token's identity predicts, with its permutation null;
* ``position_r2``: the same lookup with the position in the context as the group id;
* ``context_r2``: ridge R² from the current and the ``k`` previous tokens' embeddings
  (:func:`crosslayer.crossfit.lagged` on the top ``dims`` principal components of the
  source embedding, so the design stays as wide as one layer).

The class is the first that applies, in this order (thresholds in ``EmergenceConfig``):

1. **token-determined**: ``token_r2 >= token_min`` and above its null level;
2. **positional**: ``position_r2 >= position_min`` and above its null level;
3. **short-context**: ``context_r2 >= context_min`` (the token alone did not reach 1.);
4. **long-context**: none of these: what predicts it needs more than the last k+1 tokens.

Token before position before context: each is the simpler explanation of the next (the
context design sees the current token, and its "no token there" columns see positions < k).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crosslayer.crossfit import CrossFitRidge, check_folds, lagged, token_lookup_r2
from crosslayer.crossfit.stats import as_columns
from crosslayer.emergence.matrix import EMERGENCE_ALPHAS, _float32
from crosslayer.emergence.seeds import seed_ci
from crosslayer.errors import CrosslayerError
from crosslayer.metrics import ArrayLike

TOKEN, POSITIONAL, SHORT, LONG = "token-determined", "positional", "short-context", "long-context"
CLASSES: tuple[str, ...] = (TOKEN, POSITIONAL, SHORT, LONG)
UNSCORED = "unscored"  # failed the minimum-positives rule: no class


@dataclass
class TaxonomyScores:
    """The three cross-fitted scores per feature (NaN where not computed)."""

    token_r2: np.ndarray
    token_null: np.ndarray  # max over permutations of the shuffled lookup's R²
    position_r2: np.ndarray
    position_null: np.ndarray
    context_r2: np.ndarray


def principal_components(X: ArrayLike, dims: int) -> np.ndarray:
    """``X`` projected on its top ``dims`` principal components (centred, float32).

    Unsupervised and label-free, so fitting it on every row leaks nothing about a feature.
    """
    x = _float32(X)
    mean = x.mean(0, dtype=np.float64)
    xc = x - mean.astype(np.float32)
    cov = (xc.T.astype(np.float64) @ xc.astype(np.float64)) / len(x)
    _, vecs = np.linalg.eigh(cov)
    top = vecs[:, ::-1][:, : min(dims, x.shape[1])].astype(np.float32)
    return np.asarray(xc @ top)


def context_design(X: ArrayLike, context_ids: ArrayLike, k: int, dims: int) -> np.ndarray:
    """The short-context ridge's design: ``lagged`` top-``dims`` components, ``k`` back."""
    return lagged(principal_components(X, dims), context_ids, k)


def taxonomy_scores(
    F: ArrayLike,
    fold_ids: ArrayLike,
    *,
    tokens: ArrayLike,
    positions: ArrayLike,
    embed: ArrayLike,
    context_ids: ArrayLike,
    k: int = 4,
    dims: int = 128,
    alphas: tuple[float, ...] = EMERGENCE_ALPHAS,
    n_permutations: int = 2,
    seed: int = 0,
    device: str | None = None,
) -> TaxonomyScores:
    """Token-lookup, position-lookup and short-context R² of every column of ``F [n, m]``.

    ``embed [n, d]``: the source embedding of each row; ``tokens``, ``positions``,
    ``context_ids [n]``: per row, in store (context) order. Pass only the columns to score.
    """
    blocks = as_columns(F)
    n = blocks.shape[0]
    folds, _ = check_folds(fold_ids, n)
    for name, a in (("tokens", tokens), ("positions", positions), ("context_ids", context_ids)):
        if len(np.asarray(a).reshape(-1)) != n:
            raise CrosslayerError(
                f"{name} has {len(np.asarray(a).reshape(-1))} entries for {n} rows of F",
                f"pass one {name[:-1]} per row of F",
            )
    tok = token_lookup_r2(tokens, blocks, folds, n_permutations=n_permutations, seed=seed)
    pos = token_lookup_r2(positions, blocks, folds, n_permutations=n_permutations, seed=seed)
    design = context_design(embed, context_ids, k, dims)
    ctx = CrossFitRidge(alphas, device=device).fit(design, blocks, folds)
    return TaxonomyScores(tok.r2, tok.null_level, pos.r2, pos.null_level, ctx.r2_)


def classify(
    scores: TaxonomyScores,
    *,
    token_min: float = 0.5,
    position_min: float = 0.5,
    context_min: float = 0.5,
) -> np.ndarray:
    """Class of every feature (``CLASSES``, first that applies; see the module doc)."""

    def above(r2: np.ndarray, level: float, null: np.ndarray | None = None) -> np.ndarray:
        ok = np.nan_to_num(r2, nan=-np.inf) >= level
        if null is not None:
            ok &= np.nan_to_num(r2, nan=-np.inf) > np.nan_to_num(null, nan=-np.inf)
        return ok

    out = np.full(len(scores.token_r2), LONG, dtype=object)
    short = above(scores.context_r2, context_min)
    positional = above(scores.position_r2, position_min, scores.position_null)
    token = above(scores.token_r2, token_min, scores.token_null)
    out[short] = SHORT
    out[positional] = POSITIONAL
    out[token] = TOKEN  # written last: the first class in the order wins
    return out


def class_counts(classes: Sequence[str] | np.ndarray) -> dict[str, int]:
    """Features per class (``CLASSES`` order; unscored features are not counted)."""
    c = np.asarray(classes, dtype=object)
    return {name: int((c == name).sum()) for name in CLASSES}


def across_seeds(counts: Sequence[dict[str, int]]) -> dict[str, dict[str, object]]:
    """Share of each class over seeds: mean and a t 95% CI (needs >= 2 seeds).

    The unit that varies between runs is the seed (split, SAEs, folds), so the interval is
    over seeds: ``mean ± t_{0.975, S-1} · sd / √S`` of the per-seed shares, cut to [0, 1]
    (:func:`crosslayer.emergence.seeds.seed_ci`).
    With one seed the CI is None and ``note`` says so.
    """
    S = len(counts)
    out: dict[str, dict[str, object]] = {}
    for name in CLASSES:
        shares = [c.get(name, 0) / max(1, sum(c.get(k, 0) for k in CLASSES)) for c in counts]
        # a share lies in [0, 1]: the t interval is cut there (with 3 seeds it reaches below
        # 0 for a class that is nearly empty)
        ci = seed_ci(shares, bounds=(0.0, 1.0))
        entry: dict[str, object] = {"n_seeds": S, "mean_share": ci["mean"],
                                    "share_ci95": ci["ci95"]}  # fmt: skip
        if "note" in ci:
            entry["note"] = ci["note"]
        out[name] = entry
    return out
