"""Stage 7b: the dictionaries compared, with the seed and the document as the units.

What holds by construction (:data:`BY_CONSTRUCTION`): the residual SAE reads ``target -
ridge(source)``, which a linear map from the source cannot predict on the training tokens
(the ridge's normal equations), so every residual feature, a function of that input, has
about no *linear* signal from the source. A linear probe scoring ~0 on residual features
shows that the transcoder worked, not that they are computed on the way. So the headline
here uses a predictor the transcoder did not remove, the cross-fitted **token lookup**
(``E[f | token]`` from other documents' folds, shrunk toward the mean;
:func:`crosslayer.crossfit.token_lookup_r2`), and the **placebo** dictionary as the control
(as much variance removed, none of it linear in the source; :mod:`.placebo`):
``residual - placebo`` is the effect of removing the source-predictable part.

Each dictionary's score is the mean out-of-fold token-lookup R² over its scorable features
(the minimum-positives rule of ``crossfit``), per seed; differences get a seed-level and a
document-bootstrap CI (:mod:`.uncertainty`). Features are also matched across dictionaries
by decoder cosine (:mod:`.matching`) for the change over matched pairs and for seed-to-seed
stability. The per-feature distributions of the probes' metrics are kept beside, labelled as
what they are: tests that treat features as independent draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from crosslayer import fs
from crosslayer.compare import compare_distributions
from crosslayer.crossfit import apply_rule
from crosslayer.experiments.study_a.features import run_folds
from crosslayer.experiments.study_a.inputs import Data
from crosslayer.experiments.study_a.matching import match_features, match_summary, matched_change
from crosslayer.experiments.study_a.placebo import (
    PlaceboRemoval,
    describe_removals,
    linear_signal,
)
from crosslayer.experiments.study_a.run import JsonFile, Run, nan_array, sample_rows
from crosslayer.experiments.study_a.saes import encode_sparse
from crosslayer.experiments.study_a.transcoders import residuals
from crosslayer.experiments.study_a.uncertainty import (
    DocStats,
    compare_dictionaries,
    concat_features,
    token_lookup_doc_stats,
)
from crosslayer.rundir import seed_name
from crosslayer.store import ActivationStore
from crosslayer.transcoder import AffineTranscoder

if TYPE_CHECKING:
    from sae_lens import SAE

FEATURES_AS_INDEPENDENT = "features treated as independent (not the unit of resampling)"

BY_CONSTRUCTION = (
    "The residual SAE reads target - ridge(source), which has no linear signal from the "
    "source on the training tokens by construction of the ridge residual; every residual "
    "feature is a function of that input, so linear probes from the source score about 0 on "
    "residual features by construction. The headline therefore compares dictionaries with "
    "the cross-fitted token lookup, which the transcoder did not remove, and against the "
    "placebo (the same variance removed along random directions of the residual, none of it "
    "linear in the source): residual - placebo is the effect."
)

DEFINITIONS = {
    "score": "mean over a dictionary's scorable features of the out-of-fold token-lookup R² "
    "(E[f | token] fitted on the other folds by document, shrunk toward the feature mean, "
    "pseudo-count by inner CV); folds by document over every train and held-out token",
    "scorable": "every training set of the folds holds >= crossfit.min_pos_fit active and "
    "inactive tokens, and the pooled scored tokens >= crossfit.min_pos_score of each",
    "difference": "mean over seeds of score(a) - mean over seeds of score(b)",
    "seed_level": "paired t-interval over seeds (seed k trains every dictionary with the same "
    "initialisation and batch order); not estimable with one seed",
    "document_bootstrap": "percentile bootstrap over documents of the same out-of-fold "
    "predictions, one resample for every dictionary and seed (paired); each feature's R² in a "
    "resample is 1 - sum_d w_d SSE_d / sum_d w_d SST_d (w_d: times document d was drawn), SST "
    "about the feature's full-sample mean, as in the estimate",
    "matched": "one-to-one decoder-cosine matches (Hungarian) between seed 0 of two "
    "dictionaries; change = score(b) - score(a) over pairs with cosine > 0.7",
    "seed_stability": "decoder-cosine matches of seed 0 with seed k of the same dictionary",
}

# (a, b) pairs reported as a - b, headline first, when both dictionaries were scored
DIFFERENCES: tuple[tuple[str, str], ...] = (
    ("residual", "placebo"),
    ("residual", "baseline"),
    ("placebo", "baseline"),
    ("residual_adam", "baseline"),
)


@dataclass
class ScoredDictionary:
    """One SAE's scorable features and the per-document sums of their token-lookup R²."""

    features: np.ndarray  # [m] scored feature indices (all scorable ones, or a sample)
    stats: DocStats
    width: int
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> number of features
    n_scorable: int = -1  # scorable features before sampling (-1: not recorded)

    def r2_by_feature(self) -> np.ndarray:
        """``[width]`` R² per feature index, NaN where not scorable."""
        out = np.full(self.width, np.nan)
        out[self.features] = self.stats.r2()
        return out


@dataclass(frozen=True)
class ScoredFile:
    """Checkpoint of one SAE's scores (``stages/docstats_<sae>.npz``)."""

    path: Path

    def done(self) -> bool:
        return self.path.is_file()

    def files(self) -> list[Path]:
        return [self.path]

    def load(self) -> ScoredDictionary:
        with np.load(self.path, allow_pickle=False) as f:
            st = DocStats(f["n"], f["sum_y"], f["sum_y2"], f["sse"])
            excluded = dict(zip(f["reasons"].tolist(), f["counts"].tolist(), strict=True))
            return ScoredDictionary(
                f["features"], st, int(f["width"]), excluded, int(f["n_scorable"])
            )

    def save(self, value: ScoredDictionary) -> ScoredDictionary:
        st = value.stats
        fs.atomic_write_npz(
            self.path,
            features=value.features,
            n=st.n,
            sum_y=st.sum_y,
            sum_y2=st.sum_y2,
            sse=st.sse,
            width=value.width,
            n_scorable=value.n_scorable,
            reasons=np.array(list(value.excluded), dtype=str),
            counts=np.array(list(value.excluded.values()), dtype=np.int64),
        )
        return value


# scorable features scored per SAE and seed (a seeded sample; the seed-level CIs rest on them)
SCORE_FEATURES = 512


def positive_counts(
    F: sp.csc_matrix, fold_ids: np.ndarray, min_fit: int, min_score: int
) -> tuple[np.ndarray, dict[str, int]]:
    """Scorable features of a sparse code matrix (``crossfit``'s minimum-positives rule)."""
    K = int(fold_ids.max()) + 1
    onehot = sp.csr_matrix(
        (np.ones(len(fold_ids)), (fold_ids, np.arange(len(fold_ids)))), shape=(K, len(fold_ids))
    )
    per_fold = np.asarray((onehot @ (F > 0).astype(np.float64)).todense()).astype(np.int64)
    n_fold = np.bincount(fold_ids, minlength=K)
    n = len(fold_ids)
    rule = apply_rule(
        per_fold.sum(0) - per_fold, n - n_fold, per_fold.sum(0), n, min_fit, min_score
    )
    return np.flatnonzero(rule.scorable), dict(rule.excluded)


def score_dictionary(
    sae: SAE[Any],
    x: np.ndarray,
    tokens: np.ndarray,
    doc_ids: np.ndarray,
    fold_ids: np.ndarray,
    *,
    min_fit: int,
    min_score: int,
    max_features: int | None = None,
    seed: int = 0,
    feature_chunk: int = 128,
) -> ScoredDictionary:
    """Encode ``x`` (what the SAE reads, every scored token) and score its scorable features
    with the cross-fitted token lookup, as per-document sums.

    ``max_features``: score a seeded sample of this many scorable features (None: all). The
    score is a mean over features, so a few hundred pin it down; the sampling noise differs
    between seeds and so is inside the seed-level interval.
    """
    F = encode_sparse(sae, x)
    features, excluded = positive_counts(F, fold_ids, min_fit, min_score)
    n_scorable = len(features)
    if max_features is not None and n_scorable > max_features:
        rng = np.random.default_rng(seed)
        features = np.sort(rng.choice(features, max_features, replace=False))
    _, doc_index = np.unique(doc_ids, return_inverse=True)
    n_docs = int(doc_index.max()) + 1
    parts = [
        token_lookup_doc_stats(
            tokens,
            F[:, features[j0 : j0 + feature_chunk]].toarray(),
            fold_ids,
            doc_index,
            n_docs,
            feature_chunk=feature_chunk,
        )
        for j0 in range(0, len(features), feature_chunk)
    ]
    if not parts:  # no scorable feature: an empty score (NaN), not an error
        z = np.zeros((n_docs, 0))
        stats = DocStats(np.bincount(doc_index).astype(np.float64), z, z, z)
    else:
        stats = concat_features(parts)
    return ScoredDictionary(features, stats, int(F.shape[1]), excluded, n_scorable)


def score_dictionaries(
    run: Run,
    dictionaries: dict[str, list[SAE[Any]]],
    inputs: dict[str, np.ndarray],
    store: ActivationStore,
    rows: np.ndarray,
    fold_ids: np.ndarray | None = None,
    *,
    max_features: int | None = SCORE_FEATURES,
) -> dict[str, list[ScoredDictionary]]:
    """Score every seed of every dictionary (each cached as ``stages/docstats_<sae>.npz``).

    ``inputs[name]``: what dictionary ``name`` reads on every scored token, the store rows
    ``rows`` (train and held-out) in that order. ``fold_ids``: their folds (default: the
    run's one fold rule, :func:`~crosslayer.experiments.study_a.features.run_folds`).
    ``max_features``: scorable features scored per SAE, a sample seeded by the run's seed +
    the seed index (:func:`score_dictionary`; None: all of them).
    """
    cf = run.cfg.crossfit
    tokens, doc_ids = store.tokens[rows], store.doc_ids[rows]
    folds = run_folds(store, rows, run) if fold_ids is None else fold_ids
    out: dict[str, list[ScoredDictionary]] = {}
    for name, saes in dictionaries.items():
        out[name] = []
        for k, sae in enumerate(saes):
            label = seed_name(name, k)
            compute = partial(
                score_dictionary,
                sae,
                inputs[name],
                tokens,
                doc_ids,
                folds,
                min_fit=cf.min_pos_fit,
                min_score=cf.min_pos_score,
                max_features=max_features,
                seed=run.cfg.seed + k,
            )
            out[name].append(
                run.cached(
                    ScoredFile(run.dirs.doc_stats(label)),
                    compute,
                    (f"score_{label}", f"token-lookup scores of the {label} SAE"),
                )
            )
    return out


def dictionary_comparison(
    run: Run,
    scored: dict[str, list[ScoredDictionary]],
    dictionaries: dict[str, list[SAE[Any]]] | None = None,
) -> dict[str, Any]:
    """Scores per dictionary and seed, the differences of :data:`DIFFERENCES` with both CIs,
    matched pairs and seed stability (module docstring)."""
    n_boot = run.cfg.crossfit.n_bootstrap
    out: dict[str, Any] = {
        "by_construction": BY_CONSTRUCTION,
        "definitions": DEFINITIONS,
        "n_seeds": {name: len(s) for name, s in scored.items()},
        "scores": {
            name: {
                "per_seed": [
                    float(np.nanmean(s.stats.r2())) if len(s.features) else None for s in seeds
                ],
                "n_scorable": [s.n_scorable for s in seeds],
                "n_scored": [len(s.features) for s in seeds],
                "excluded_seed0": seeds[0].excluded,
            }
            for name, seeds in scored.items()
        },
        "differences": {},
    }
    for a, b in DIFFERENCES:
        if a in scored and b in scored and len(scored[a]) == len(scored[b]):
            res = compare_dictionaries(
                [s.stats for s in scored[a]], [s.stats for s in scored[b]],
                n_boot=n_boot, seed=run.cfg.seed,
            )  # fmt: skip
            res["a"]["name"], res["b"]["name"] = a, b
            out["differences"][f"{a} - {b}"] = res
    if out["differences"]:
        out["headline"] = next(iter(out["differences"]))
    if dictionaries:
        out["matched"] = matched_pairs(dictionaries, scored)
        out["seed_stability"] = seed_stability(dictionaries)
    return out


def removals_stage(
    run: Run,
    data: Data,
    R: tuple[np.ndarray, np.ndarray],
    placebo: PlaceboRemoval | None = None,
    adam: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """What each dictionary input removed from the target, and the linear signal from the
    source it kept (:func:`~.placebo.describe_removals`), cached as ``stages/removals.json``.

    Inputs: ours (``R``: train, held-out residuals of the ridge), the placebo's, its removed
    part (which should hold no linear signal), and, when ``transcoder.study_recipe``, the
    residual of the study's Adam recipe refitted exactly as the transcoder stage fits it (same
    seeded sample and settings; or ``adam`` when the caller has it): the explanation of the
    seed study's small gap is that its "residual" keeps most of the source-linear signal, so
    its SAE's features stay predictable.
    """

    def compute() -> dict[str, Any]:
        inputs = {"residual": R}
        if placebo is not None:
            inputs["placebo"] = (
                placebo.transform(data.Y_train, R[0]),
                placebo.transform(data.Y_heldout, R[1]),
            )
        study = study_recipe_residuals(run, data) if adam is None else adam
        if study is not None:
            inputs["residual_adam"] = study
        X, Y = (data.X_train, data.X_heldout), (data.Y_train, data.Y_heldout)
        out = describe_removals(X, Y, inputs)
        if placebo is not None:
            out["placebo"]["removed_part_linear_signal"] = linear_signal(
                data.X_train, placebo.removed(R[0]), data.X_heldout, placebo.removed(R[1])
            )
            out["placebo"]["construction"] = placebo.summary()
        out["definitions"] = {
            "removed_share": "1 - tr Cov(input) / tr Cov(target) on each split",
            "linear_signal_left": "explained variance of a ridge map (GCV on train) from the "
            "source to the input, on train and held-out",
        }
        return out

    return run.cached(JsonFile(run.dirs.removals), compute, ("removals", "what each input removed"))


def study_recipe_residuals(run: Run, data: Data) -> tuple[np.ndarray, np.ndarray] | None:
    """``target - adam(source)`` on both splits, the Adam recipe fitted as the transcoder
    stage fits it; None when ``transcoder.study_recipe`` is off."""
    cfg = run.cfg.transcoder
    if not cfg.study_recipe:
        return None
    sample = sample_rows(len(data.X_train), cfg.adam_tokens, run.cfg.seed)
    adam = AffineTranscoder(
        solver="adam",
        lr=cfg.adam_lr,
        epochs=cfg.adam_epochs,
        batch_size=cfg.adam_batch_size,
        seed=run.cfg.seed,
        device=run.cfg.device,
    ).fit(data.X_train[sample], data.Y_train[sample])
    return (
        residuals(adam, data.X_train, data.Y_train),
        residuals(adam, data.X_heldout, data.Y_heldout),
    )


def _decoder(sae: SAE[Any]) -> np.ndarray:
    return np.asarray(sae.W_dec.detach().float().cpu().numpy())


def matched_pairs(
    dictionaries: dict[str, list[SAE[Any]]], scored: dict[str, list[ScoredDictionary]]
) -> dict[str, Any]:
    """Seed 0 of baseline against seed 0 of each other dictionary: how well their decoders
    match, and the change of the token-lookup score over matched pairs."""
    out: dict[str, Any] = {}
    if "baseline" not in dictionaries:
        return out
    base = dictionaries["baseline"][0]
    for name, saes in dictionaries.items():
        if name == "baseline":
            continue
        pairs, cos = match_features(_decoder(base), _decoder(saes[0]))
        entry: dict[str, Any] = {"cosines": match_summary(cos)}
        if "baseline" in scored and name in scored:
            entry["token_r2_change"] = matched_change(
                pairs, cos, scored["baseline"][0].r2_by_feature(), scored[name][0].r2_by_feature()
            )
        out[f"baseline -> {name}"] = entry
    return out


def seed_stability(dictionaries: dict[str, list[SAE[Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Per dictionary: seed 0 matched with every other seed (decoder cosines)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, saes in dictionaries.items():
        rows = []
        for k, other in enumerate(saes[1:], start=1):
            _, cos = match_features(_decoder(saes[0]), _decoder(other))
            rows.append({"seed": k} | match_summary(cos))
        out[name] = rows
    return out


def compare_saes(
    run: Run,
    features: dict[str, dict[str, Any]],
    scored: dict[str, list[ScoredDictionary]] | None = None,
    dictionaries: dict[str, list[SAE[Any]]] | None = None,
    removals: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """results.json ``comparison``: the per-feature probe metrics of baseline vs residual
    (labelled :data:`FEATURES_AS_INDEPENDENT`), and with ``scored`` the dictionary-level
    comparison (``comparison.dictionaries``, :func:`dictionary_comparison`); ``removals``
    (:func:`~.placebo.describe_removals`) says what each input removed from the target."""
    out: dict[str, Any] = {"headline_metric": run.cfg.analysis.metric}
    a, b = features["baseline"], features["residual"]
    for metric in ("balanced_accuracy", "auroc", "r2"):
        out[metric] = _compare(
            compare_distributions,
            nan_array(a["features"][metric]),
            nan_array(b["features"][metric]),
            run,
        )
    if a["study_protocol"] and b["study_protocol"]:
        out["study_protocol_accuracy"] = _compare(
            compare_distributions,
            nan_array(a["study_protocol"]["accuracy"]),
            nan_array(b["study_protocol"]["accuracy"]),
            run,
        )
    if scored:
        out["dictionaries"] = dictionary_comparison(run, scored, dictionaries)
    if removals:
        out["removals"] = removals
    return out


def _compare(fn: Callable[..., Any], a: np.ndarray, b: np.ndarray, run: Run) -> dict[str, Any]:
    """``fn`` (compare_distributions) with its "a"/"b" named baseline/residual."""
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return {
            "baseline": {"n": int(a.size)},
            "residual": {"n": int(b.size)},
            "note": "fewer than two scored features in a group: no comparison",
        }
    res = dict(fn(a, b, n_boot=run.cfg.analysis.n_bootstrap, seed=run.cfg.seed))
    res["baseline"], res["residual"] = res.pop("a"), res.pop("b")
    res["difference"] = "baseline - residual"
    res["unit"] = FEATURES_AS_INDEPENDENT
    return res


def headline_rows(comparison: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, value)`` rows of the dictionary differences for a summary table: the
    difference, its seed-level and document-bootstrap 95% CIs and p-values as printed."""
    d = comparison.get("dictionaries") or {}
    rows = []
    for key, res in (d.get("differences") or {}).items():
        seed, doc = res["seed_level"], res["document_bootstrap"]
        s_ci = "not estimable" if seed["ci95"] is None else _interval(seed["ci95"])
        rows.append(
            (
                f"token-lookup R², {key} ({seed['n_seeds']} seeds, {doc['n_docs']} documents)",
                f"{res['difference']:+.3f}; seeds {s_ci}, p {seed['p_text']}; "
                f"documents {_interval(doc['ci95'])}, p {doc['p_text']}",
            )
        )
    return rows


def _interval(ci: list[float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"
