"""Residual minus placebo on synthetic layers (issue 14, item 7): about 0 where the late layer
has no context structure, clearly positive where it has.

The late layer is ``Y = X A + N`` (``X = E[token]``, tokens i.i.d., ``N`` independent noise):
everything it holds beyond noise is a linear function of the current token's embedding, and
nothing depends on earlier tokens. The residual ``R = Y - ridge(X)`` and the placebo
``Y - M R`` (:func:`fit_placebo`, the same variance removed along random directions of ``R``)
are built with the library's own transcoder and placebo, on a training split of documents,
as ``crosslayer run`` builds them. Each is read by the same dictionary (a fixed random ReLU
encoder on the standardised input: training SAEs would add seed noise, not change what is
tested), and the codes are scored out of fold by document with the library's predictors:

* the short-context score, the out-of-fold ridge R² from the previous token's embedding
  (:func:`crosslayer.crossfit.lagged`, the part of the context design the transcoder does not
  see): residual - placebo is within ``NULL_TOL`` of 0 without context structure, and above
  ``EFFECT_MIN`` once the late layer also holds ``X_{t-1} B``;
* the token lookup (the comparison stage's headline score): here residual - placebo is *not*
  about 0 but minus the placebo's own token score, by construction: the ridge residual has no
  linear token signal left, and a layer that is linear in the embedding has no other.
"""

from __future__ import annotations

import numpy as np
import pytest

from crosslayer.crossfit import CrossFitRidge, grouped_folds, lagged, token_lookup_r2
from crosslayer.experiments.study_a.placebo import fit_placebo, removed_share
from crosslayer.transcoder import AffineTranscoder

DOCS, LEN, VOCAB, D, M = 60, 80, 40, 16, 32
NULL_TOL = 0.01  # |residual - placebo| of the mean short-context R², no context structure
EFFECT_MIN = 0.03  # residual - placebo with a previous-token term of ~15% of the variance


def _layers(context: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = DOCS * LEN
    doc = np.repeat(np.arange(DOCS), LEN)
    tokens = rng.integers(0, VOCAB, n)
    X = rng.standard_normal((VOCAB, D))[tokens]
    prev = np.vstack([np.zeros((1, D)), X[:-1]])
    prev[np.arange(n) % LEN == 0] = 0  # documents do not see each other
    A = 0.16 * rng.standard_normal((D, D))  # ~30% of the late layer's variance
    B = 0.2 * rng.standard_normal((D, D))
    Y = X @ A + rng.standard_normal((n, D)) + (prev @ B if context else 0.0)
    return {"doc": doc, "tokens": tokens, "X": X, "Y": Y}


def _scores(context: bool) -> dict[str, dict[str, float]]:
    L = _layers(context)
    doc, X, Y = L["doc"], L["X"], L["Y"]
    train = doc < 45  # the transcoder and the placebo see the training documents only
    R = Y - AffineTranscoder().fit(X[train], Y[train]).predict(X)
    placebo = fit_placebo(Y[train], R[train], seed=1)
    P = placebo.transform(Y, R)
    # the placebo removes exactly the transcoder's share, so only *which* variance differs
    assert removed_share(Y[train], P[train]) == pytest.approx(removed_share(Y[train], R[train]))
    folds = grouped_folds(doc, 5, 0)
    W = np.random.default_rng(2).standard_normal((D, M))
    W /= np.linalg.norm(W, axis=0)
    previous = lagged(X, doc, 1)[:, D:]  # x_{t-1} and its presence flag, not x_t
    out = {}
    for name, Z in (("residual", R), ("placebo", P)):
        z = (Z - Z[train].mean(0)) / np.sqrt(Z[train].var(0).sum() / D)
        F = np.maximum(z @ W - 0.8, 0.0)  # ~20% of tokens active per feature
        assert ((F > 0).mean(0) > 0.05).all()
        out[name] = {
            "context": float(np.mean(CrossFitRidge().fit(previous, F, folds).r2_)),
            "token": float(np.nanmean(token_lookup_r2(L["tokens"], F, folds, n_permutations=0).r2)),
        }
    return out


def test_residual_minus_placebo_is_about_zero_without_context_structure() -> None:
    s = _scores(context=False)
    diff = s["residual"]["context"] - s["placebo"]["context"]
    assert abs(diff) < NULL_TOL, s
    # the headline token lookup: not 0 here, by construction (the module docstring)
    assert abs(s["residual"]["token"]) < 0.01 and s["placebo"]["token"] > 0.1, s


def test_residual_minus_placebo_finds_context_structure() -> None:
    """The same check fails once the late layer depends on the previous token."""
    s = _scores(context=True)
    diff = s["residual"]["context"] - s["placebo"]["context"]
    assert diff > EFFECT_MIN, s
