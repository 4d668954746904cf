"""Seed-level and document-level uncertainty of dictionary claims."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from crosslayer.crossfit import grouped_folds, token_lookup_r2
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.study_a.uncertainty import (
    DocStats,
    bootstrap_weights,
    compare_dictionaries,
    dictionary_score,
    doc_stats,
    format_p,
    seed_interval,
    token_lookup_doc_stats,
    token_lookup_oof,
)


def token_data(n_docs: int = 40, per_doc: int = 60, m: int = 5, strength: float = 1.0, seed=0):
    """Features = strength * g(token) + noise; tokens drawn from 50 ids; documents as groups."""
    rng = np.random.default_rng(seed)
    docs = np.repeat(np.arange(n_docs), per_doc)
    tokens = rng.integers(0, 50, size=docs.size)
    table = np.random.default_rng(123).normal(size=(50, m))
    F = strength * table[tokens] + rng.normal(size=(docs.size, m))
    return tokens, F, docs


def test_token_lookup_doc_stats_reproduce_token_lookup_r2() -> None:
    tokens, F, docs = token_data(strength=0.7)
    folds = grouped_folds(docs, 5, seed=0)
    st = token_lookup_doc_stats(tokens, F, folds, docs, 40, feature_chunk=2)
    ref = token_lookup_r2(tokens, F, folds, n_permutations=0).r2
    np.testing.assert_allclose(st.r2(), ref, atol=1e-10)
    assert (ref > 0.2).all()  # the features really are token-determined here


def test_weighted_r2_equals_r2_of_replicated_documents() -> None:
    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(6), 20)
    F = rng.normal(size=(120, 3)) + docs[:, None] * 0.3
    F_hat = F + rng.normal(size=F.shape) * 0.8
    st = doc_stats(F, F_hat, docs, 6)
    w = np.array([[2, 0, 1, 0, 3, 0]], dtype=float)
    rows = np.concatenate(
        [np.flatnonzero(docs == d) for d in range(6) for _ in range(int(w[0, d]))]
    )
    f, fh = F[rows], F_hat[rows]
    # SST about the full-sample mean, kept like the predictions (not the resample's own)
    ref = 1 - ((f - fh) ** 2).sum(0) / ((f - F.mean(0)) ** 2).sum(0)
    np.testing.assert_allclose(st.r2(w)[0], ref, rtol=1e-10)
    np.testing.assert_allclose(
        st.r2(), 1 - ((F - F_hat) ** 2).sum(0) / ((F - F.mean(0)) ** 2).sum(0), rtol=1e-10
    )


def _few_documents(seed: int, n_docs: int = 16) -> tuple[DocStats, np.ndarray, np.ndarray]:
    """Token-determined features plus strong per-document offsets (which no token lookup
    predicts), scored by the cross-fitted lookup; also returns F and its predictions."""
    tokens, F, docs = token_data(n_docs=n_docs, per_doc=40, strength=0.7, seed=seed)
    F = F + np.random.default_rng(seed + 100).normal(size=(n_docs, F.shape[1]))[docs] * 1.5
    folds = grouped_folds(docs, 4, seed=seed)
    strength = token_lookup_r2(tokens, F, folds, n_permutations=0).strength
    F_hat = token_lookup_oof(tokens, F, folds, strength)
    return doc_stats(F, F_hat, docs, n_docs), F, F_hat


def test_bootstrap_draws_equal_a_slow_loop_over_resampled_rows() -> None:
    st, F, F_hat = _few_documents(0)
    docs = np.repeat(np.arange(16), 40)
    W = bootstrap_weights(16, 200, seed=5)
    got = st.r2(W)
    centre = F.mean(0)
    for b in range(len(W)):
        rows = np.concatenate(
            [np.flatnonzero(docs == d) for d in range(16) for _ in range(int(W[b, d]))]
        )
        sse = ((F[rows] - F_hat[rows]) ** 2).sum(0)
        ref = 1 - sse / ((F[rows] - centre) ** 2).sum(0)
        np.testing.assert_allclose(got[b], ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dictionary_score(st, W), got.mean(1), atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bootstrap_is_centred_on_the_estimate_with_few_documents(seed: int) -> None:
    """With 16 documents the resample mean moves a lot: the resampled scores average to the
    estimate within 0.3 of their SD (re-centring SST on each resample's mean put them about
    one SD below it), and the difference's CI holds the difference well inside it."""
    st, _, _ = _few_documents(seed)
    est = float(dictionary_score(st))
    boot = dictionary_score(st, bootstrap_weights(16, 4000, seed))
    assert abs(boot.mean() - est) < 0.3 * boot.std()
    other, _, _ = _few_documents(seed + 10)
    out = compare_dictionaries([st], [other], n_boot=2000, seed=seed)
    lo, hi = out["document_bootstrap"]["ci95"]
    assert lo <= out["difference"] <= hi
    assert abs((lo + hi) / 2 - out["difference"]) < 0.2 * (hi - lo)


def test_document_bootstrap_matches_the_spread_over_new_documents() -> None:
    """Documents carry their own offsets (the unit that varies): the bootstrap SE of the
    score equals, within 35%, its SD over independent draws of documents."""

    def draw(seed: int) -> DocStats:
        rng = np.random.default_rng(seed)
        docs = np.repeat(np.arange(30), 40)
        offset = rng.normal(size=(30, 4))[docs] * 0.8  # shared within a document
        signal = rng.normal(size=(docs.size, 4))
        F = signal + offset + rng.normal(size=signal.shape) * 0.5
        return doc_stats(F, signal, docs, 30)  # prediction: the signal alone

    scores = [np.nanmean(draw(s).r2()) for s in range(300)]
    st = draw(1000)
    W = bootstrap_weights(30, 2000, seed=0)
    boot = np.nanmean(st.r2(W), axis=1)
    assert boot.std() == pytest.approx(np.std(scores), rel=0.35)
    # treating tokens as the unit would be far too narrow: a token bootstrap's SE is smaller
    assert np.std(scores) > 2.0 * _token_bootstrap_se(st_seed=1000)


def _token_bootstrap_se(st_seed: int) -> float:
    rng = np.random.default_rng(st_seed)
    docs = np.repeat(np.arange(30), 40)
    offset = rng.normal(size=(30, 4))[docs] * 0.8
    signal = rng.normal(size=(docs.size, 4))
    F = signal + offset + rng.normal(size=signal.shape) * 0.5
    st = doc_stats(F, signal, np.arange(docs.size), docs.size)  # every token its own "doc"
    W = bootstrap_weights(docs.size, 500, seed=1)
    return float(np.nanmean(st.r2(W), axis=1).std())


def test_seed_interval_is_the_paired_t_test() -> None:
    a, b = np.array([0.30, 0.34, 0.31]), np.array([0.10, 0.15, 0.09])
    out = seed_interval(a, b)
    ref = stats.ttest_rel(a, b)
    assert out["p"] == pytest.approx(max(ref.pvalue, 1e-3))
    ci = stats.t.interval(0.95, 2, loc=(a - b).mean(), scale=stats.sem(a - b))
    np.testing.assert_allclose(out["ci95"], ci)
    one = seed_interval(a[:1], b[:1])
    assert one["ci95"] is None and one["p_text"] == "not estimable"


def test_p_values_are_printed_at_their_resolution() -> None:
    assert format_p(8.8e-271) == "< 0.001"
    assert format_p(0.0342) == "0.034"
    assert format_p(0.0, 1 / 2000) == "< 0.0005"
    assert format_p(float("nan")) == "not estimable"


def test_compare_dictionaries_finds_a_planted_gap_and_no_gap() -> None:
    tokens, _, docs = token_data()
    folds = grouped_folds(docs, 5, seed=0)

    table = np.random.default_rng(7).normal(size=(50, 5))

    def dictionary(strength: float, seed: int) -> DocStats:
        """One "seed": the same tokens, other noise (a retrained dictionary's features)."""
        noise = np.random.default_rng(seed).normal(size=(tokens.size, 5))
        F = strength * table[tokens] + noise
        return token_lookup_doc_stats(tokens, F, folds, docs, 40)

    strong = [dictionary(1.0, s) for s in (1, 2, 3)]
    weak = [dictionary(0.2, s) for s in (4, 5, 6)]
    out = compare_dictionaries(strong, weak, n_boot=500, seed=0)
    assert out["difference"] > 0.2
    assert 0 < out["seed_level"]["ci95"][0] < out["difference"] < out["seed_level"]["ci95"][1]
    lo, hi = out["document_bootstrap"]["ci95"]
    assert 0 < lo < out["difference"] < hi
    assert out["document_bootstrap"]["p_text"] == "< 0.002"
    # no gap: equally strong dictionaries with other noise; both intervals cover 0
    null = compare_dictionaries(strong, [dictionary(1.0, s) for s in (7, 8, 9)], n_boot=500)
    assert abs(null["difference"]) < 0.03
    for level in ("seed_level", "document_bootstrap"):
        lo, hi = null[level]["ci95"]
        assert lo < 0 < hi
    same = compare_dictionaries(strong, strong, n_boot=200)
    assert same["difference"] == 0.0 and same["document_bootstrap"]["ci95"] == [0.0, 0.0]
    with pytest.raises(CrosslayerError, match="same seeds"):
        compare_dictionaries(strong, weak[:2])
