"""Emergence (issue 15): the features x layers matrix against scikit-learn, built features
that appear at a known layer, the taxonomy's thresholds on features built to be each class,
and the interpretability measures against hand counts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats
from sklearn.linear_model import Ridge
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler

from crosslayer.crossfit import grouped_folds
from crosslayer.emergence import (
    CLASSES,
    across_seeds,
    auroc_of,
    class_counts,
    classify,
    emergence_layers,
    emergence_matrix,
    taxonomy_scores,
    top_token_stats,
)
from crosslayer.emergence.taxonomy import LONG, POSITIONAL, SHORT, TOKEN
from crosslayer.errors import CrosslayerError

ALPHAS = (1e-4, 1e-2, 1.0, 30.0)


def _sklearn_crossfit(
    X: np.ndarray, f: np.ndarray, folds: np.ndarray, alphas: tuple[float, ...] = ALPHAS
) -> tuple[float, float]:
    """One feature the slow way: Ridge over the grid, alpha by leave-one-training-fold-out
    GroupKFold inside each outer training set, pooled out-of-fold R² and AUROC."""
    K = folds.max() + 1
    pred = np.empty(len(f))
    for train, test in GroupKFold(n_splits=K).split(X, groups=folds):
        cv = np.zeros(len(alphas))
        for itr, iva in GroupKFold(n_splits=K - 1).split(X[train], groups=folds[train]):
            tr, va = train[itr], train[iva]
            sc = StandardScaler().fit(X[tr])
            for a, alpha in enumerate(alphas):
                m = Ridge(alpha=alpha * len(tr)).fit(sc.transform(X[tr]), f[tr])
                cv[a] += ((f[va] - m.predict(sc.transform(X[va]))) ** 2).sum()
        alpha = alphas[int(np.argmin(cv))]
        sc = StandardScaler().fit(X[train])
        m = Ridge(alpha=alpha * len(train)).fit(sc.transform(X[train]), f[train])
        pred[test] = m.predict(sc.transform(X[test]))
    r2 = 1 - ((f - pred) ** 2).sum() / ((f - f.mean()) ** 2).sum()
    return float(r2), float(roc_auc_score(f > 0, pred))


def test_matrix_matches_sklearn_reference() -> None:
    rng = np.random.default_rng(0)
    n, d, m = 480, 5, 4
    docs = np.repeat(np.arange(n // 20), 20)
    folds = grouped_folds(docs, 4, seed=0)
    layers = {f"blocks.{i}.hook_resid_post": rng.normal(size=(n, d)) for i in (1, 0)}
    layers["hook_embed"] = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d)
    h = layers["blocks.0.hook_resid_post"] @ rng.normal(size=(d, m)) + rng.normal(size=(n, m))
    F = np.maximum(h - 0.5, 0)
    F[:, 3] = 0
    F[rng.choice(n, 8, replace=False), 3] = 1.0  # too few positives to fit: excluded
    res = emergence_matrix(layers, sp.csc_matrix(F), folds, alphas=ALPHAS, min_pos_fit=20)
    assert res.hooks == ["hook_embed", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert list(res.layers) == [-1, 0, 1]
    assert res.scorable.tolist() == [True, True, True, False]
    assert res.excluded["too few active tokens to fit"] == 1
    assert np.isnan(res.r2[3]).all() and np.isnan(res.auroc[3]).all()
    for li, hook in enumerate(res.hooks):
        for j in range(3):
            r2, auc = _sklearn_crossfit(layers[hook], F[:, j], folds)
            assert res.r2[j, li] == pytest.approx(r2, abs=1e-5)
            assert res.auroc[j, li] == pytest.approx(auc, abs=1e-6)
    # dense input gives the same matrix
    dense = emergence_matrix(layers, F, folds, alphas=ALPHAS, min_pos_fit=20)
    np.testing.assert_allclose(dense.r2, res.r2, atol=1e-6, equal_nan=True)


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    z = np.round(rng.normal(size=(300, 3)), 1)  # many ties
    y = rng.random((300, 3)) < [[0.1, 0.5, 0.9]]
    import torch

    got = auroc_of(torch.from_numpy(z).float(), torch.from_numpy(y))
    want = [roc_auc_score(y[:, j], z[:, j].astype(np.float32)) for j in range(3)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert np.isnan(auroc_of(torch.zeros(5, 1), torch.zeros(5, 1, dtype=torch.bool))).all()


def test_matrix_finds_the_layer_a_feature_is_built_to_appear_at() -> None:
    """Layer l holds noise plus the signal of every feature whose onset is <= l."""
    rng = np.random.default_rng(2)
    n, d, L = 3000, 24, 6
    onsets = np.array([0, 1, 2, 3, 4, 5, 2, -1])  # -1: in no layer (never predictable)
    m = len(onsets)
    s = rng.normal(size=(n, m))
    F = np.maximum(s - 0.3, 0)
    dirs = rng.normal(size=(m, d))
    hooks = ["hook_embed", *[f"blocks.{i}.hook_resid_post" for i in range(L - 1)]]
    layers = {}
    for li, hook in enumerate(hooks):
        on = (onsets >= 0) & (onsets <= li)
        layers[hook] = rng.normal(size=(n, d)) + (s * on) @ dirs * 3
    folds = grouped_folds(np.arange(n) // 30, 5, seed=0)
    res = emergence_matrix(layers, sp.csc_matrix(F), folds, min_pos_fit=50)
    em = emergence_layers(res.r2, frac=0.9)
    assert em.index.tolist() == [int(o) if o >= 0 else -1 for o in onsets]
    assert em.never.tolist() == [False] * (m - 1) + [True]
    # before its onset a feature is unpredictable out of fold, after it well predicted
    for j, o in enumerate(onsets[:-1]):
        assert (res.r2[j, :o] < 0.05).all() and (res.r2[j, o:] > 0.5).all()
        assert (res.auroc[j, o:] > 0.9).all()
    # the same with AUROC as the metric (chance 0.5)
    assert emergence_layers(res.auroc, 0.9, chance=0.5).index[:-1].tolist() == onsets[:-1].tolist()


def test_emergence_layer_rule_by_hand() -> None:
    scores = np.array(
        [
            [0.0, 0.5, 0.89, 1.0],  # 0.9 of best = 0.9: first at column 3
            [0.1, 0.95, 0.9, 1.0],  # column 1 (>= 0.9)
            [-0.2, -0.1, 0.0, -0.3],  # best <= 0: never predictable
            [np.nan] * 4,  # not scored
            [np.nan, 0.2, np.nan, 0.1],  # NaN layers never count
        ]
    )
    em = emergence_layers(scores, frac=0.9)
    assert em.index.tolist() == [3, 1, -1, -1, 1]
    assert em.never.tolist() == [False, False, True, False, False]
    assert em.scored.tolist() == [True, True, True, False, True]
    assert emergence_layers(scores, frac=0.5).index.tolist() == [1, 1, -1, -1, 1]
    with pytest.raises(CrosslayerError, match="frac"):
        emergence_layers(scores, frac=0.0)


def _built_features(seed: int = 3) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
    """Tokens in contexts of 24, and one feature built to be each class (plus a second
    token-determined one that is sparse, as SAE features are)."""
    rng = np.random.default_rng(seed)
    n_ctx, T, vocab, d = 200, 24, 60, 16
    n = n_ctx * T
    tok = rng.integers(0, vocab, n)
    ctx = np.repeat(np.arange(n_ctx), T)
    pos = np.tile(np.arange(T), n_ctx)
    emb = rng.normal(size=(vocab, d))
    w = rng.normal(size=d)

    def back(i: int) -> np.ndarray:  # w . embedding of the token i back (0 before the start)
        out = np.zeros(n)
        out[i:] = (emb[tok] @ w)[:-i]
        out[pos < i] = 0.0
        return out

    a = rng.normal(size=vocab)
    b = rng.normal(size=T) * 2
    F = np.stack(
        [
            np.maximum(a[tok], 0) + 0.05 * rng.normal(size=n),  # the current token's value
            b[pos] + 0.1 * rng.normal(size=n),  # the position's value
            back(1) + 0.5 * back(2),  # the previous two tokens
            back(10),  # ten tokens back: beyond k
            np.where(tok < 6, 1.0 + a[tok] ** 2, 0.0),  # sparse token detector
        ],
        axis=1,
    )
    data = {"tokens": tok, "positions": pos, "context_ids": ctx, "embed": emb[tok]}
    return data, F, [TOKEN, POSITIONAL, SHORT, LONG, TOKEN]


def test_taxonomy_thresholds_on_built_features() -> None:
    data, F, want = _built_features()
    folds = grouped_folds(data["context_ids"] // 4, 5, seed=0)
    sc = taxonomy_scores(F, folds, k=3, dims=16, **data)
    assert sc.token_r2[0] > 0.9 and sc.token_r2[4] > 0.9
    assert sc.position_r2[1] > 0.9 and sc.token_r2[1] < 0.05
    assert sc.context_r2[2] > 0.9 and sc.token_r2[2] < 0.2 and sc.position_r2[2] < 0.1
    assert max(sc.token_r2[3], sc.position_r2[3], sc.context_r2[3]) < 0.05
    assert list(classify(sc)) == want
    assert class_counts(classify(sc)) == {TOKEN: 2, POSITIONAL: 1, SHORT: 1, LONG: 1}
    # the thresholds decide: just above a feature's score moves it down the order
    assert classify(sc, token_min=sc.token_r2[0] + 1e-9)[0] != TOKEN
    assert classify(sc, position_min=sc.position_r2[1] + 1e-9)[1] == LONG
    assert classify(sc, context_min=sc.context_r2[2] + 1e-9)[2] == LONG
    assert classify(sc, context_min=-1.0)[3] == SHORT
    # the sparse input path gives the same scores
    sp_sc = taxonomy_scores(sp.csc_matrix(F), folds, k=3, dims=16, **data)
    np.testing.assert_allclose(sp_sc.context_r2, sc.context_r2, atol=1e-6)
    np.testing.assert_allclose(sp_sc.token_r2, sc.token_r2, atol=1e-9)


def test_taxonomy_null_level_guards_the_token_class() -> None:
    """A token threshold below the permutation null cannot make a noise feature token-like."""
    data, F, _ = _built_features()
    folds = grouped_folds(data["context_ids"] // 4, 5, seed=0)
    noise = np.random.default_rng(9).normal(size=(len(F), 1))
    sc = taxonomy_scores(noise, folds, k=1, dims=4, **data)
    assert sc.token_r2[0] < 0.05
    assert sc.token_r2[0] <= sc.token_null[0] and sc.position_r2[0] <= sc.position_null[0]
    # thresholds below zero: only the null levels keep it out of the two lookup classes
    assert classify(sc, token_min=-1.0, position_min=-1.0)[0] == LONG
    assert classify(sc, token_min=-1.0, position_min=-1.0, context_min=-1.0)[0] == SHORT


def test_top_token_stats_by_hand() -> None:
    tokens = np.array([7, 7, 3, 7, 5, 3, 9, 9])
    F = np.zeros((8, 3))
    F[:, 0] = [5, 4, 3, 2, 1, 0, 0, 0]  # top 4: tokens 7, 7, 3, 7
    F[[6, 7], 1] = [1.0, 2.0]  # only two active: tokens 9, 9
    res = top_token_stats(sp.csc_matrix(F), tokens, top_n=4)
    p = np.array([3, 1]) / 4
    assert res.token_entropy[0] == pytest.approx(-(p * np.log2(p)).sum())
    assert res.top_token_share[0] == pytest.approx(0.75)
    assert res.top_token[0] == 7 and res.n_top.tolist() == [4, 2, 0]
    assert res.token_entropy[1] == 0.0 and res.top_token_share[1] == 1.0
    assert np.isnan(res.token_entropy[2]) and res.top_token[2] == -1


def test_class_shares_across_seeds() -> None:
    one = across_seeds([{TOKEN: 2, POSITIONAL: 0, SHORT: 1, LONG: 1}])
    assert one[TOKEN]["mean_share"] == 0.5 and one[TOKEN]["share_ci95"] is None
    assert "one seed" in str(one[TOKEN]["note"])
    seeds = [{TOKEN: t, POSITIONAL: 0, SHORT: 0, LONG: 10 - t} for t in (2, 3, 5)]
    res = across_seeds(seeds)
    shares = np.array([0.2, 0.3, 0.5])
    half = stats.t.ppf(0.975, 2) * shares.std(ddof=1) / np.sqrt(3)
    assert res[TOKEN]["share_ci95"] == pytest.approx([0.0, shares.mean() + half])  # cut at 0
    assert shares.mean() - half < 0
    assert set(res) == set(CLASSES)
    # a nearly empty class: the t interval would reach below 0; a share's CI stays in [0, 1]
    rare = across_seeds([{TOKEN: t, LONG: 100 - t} for t in (0, 0, 1)])
    assert rare[TOKEN]["share_ci95"][0] == 0.0
    assert rare[TOKEN]["share_ci95"][1] == pytest.approx(
        0.01 / 3 + stats.t.ppf(0.975, 2) * np.std([0, 0, 0.01], ddof=1) / np.sqrt(3)
    )
    assert rare[LONG]["share_ci95"][1] == 1.0


def test_bad_inputs_are_one_line_errors() -> None:
    folds = np.arange(40) % 4
    with pytest.raises(CrosslayerError, match="has 30 rows but F has 40"):
        emergence_matrix({"hook_embed": np.zeros((30, 3))}, np.zeros((40, 2)), folds)
    with pytest.raises(CrosslayerError, match="unknown hook name"):
        emergence_matrix({"embed": np.zeros((40, 3))}, np.zeros((40, 2)), folds)
    with pytest.raises(CrosslayerError, match="no layers"):
        emergence_matrix({}, np.zeros((40, 2)), folds)
