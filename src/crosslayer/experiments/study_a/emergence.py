"""Stage 8b: when and which features emerge, on the depth sweep's store.

The sweep store holds ``hook_embed`` (the source) and every ``blocks.L.hook_resid_post`` up
to the target for the same tokens, so each SAE is encoded on its target rows (the residual
SAE on target minus the ridge transcoder's prediction from the source rows) and every
scorable feature is cross-fitted from every layer (:func:`crosslayer.emergence.emergence_matrix`)
on the run's folds, ``grouped_folds(store.doc_ids, crossfit.n_folds, seed)`` over all rows.
The SAEs share one matrix call, so each layer's eigendecompositions serve every SAE's
features. Then each scored feature's class (:mod:`crosslayer.emergence.taxonomy`) and every
feature's top-token measures, for seed 0 and every further seed of each SAE
(``EmergenceInputs.seed_saes``), and the matrix of a random sample of at most
``emergence.seed_features`` scored features of every further seed (all of them in one more
matrix call), so that the class shares, the median top-token measures and the median
emergence layer get seed-level CIs (:mod:`crosslayer.emergence.seeds`), and so do the
differences between dictionaries, paired by seed.

The checkpoint (``stages/emergence.json``) keeps the measured scores; emergence layers,
classes, counts and plots are derived from it on every call (cheap), and
:func:`run_emergence` returns the ``emergence`` and ``taxonomy`` sections of
``results.json`` and per-feature columns for ``features/<sae>.parquet``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from crosslayer.crossfit import count_positives
from crosslayer.crossfit.stats import as_columns
from crosslayer.emergence import (
    CHANCE,
    CLASSES,
    EMERGENCE_ALPHAS,
    UNSCORED,
    EmergenceLayers,
    EmergenceMatrix,
    TaxonomyScores,
    TopTokenStats,
    across_seeds,
    class_counts,
    classify,
    emergence_layers,
    emergence_matrix,
    paired_difference,
    seed_ci,
    taxonomy_scores,
    top_token_stats,
)
from crosslayer.emergence.plots import Panel, write_emergence_plots
from crosslayer.emergence.taxonomy import LONG, POSITIONAL, SHORT, TOKEN
from crosslayer.errors import CrosslayerError
from crosslayer.experiments.study_a.features import store_folds
from crosslayer.experiments.study_a.hooks import sweep_hooks
from crosslayer.experiments.study_a.inputs import Hooks
from crosslayer.experiments.study_a.run import JsonFile, Run, nan_array
from crosslayer.experiments.study_a.saes import encode_sparse
from crosslayer.experiments.study_a.transcoders import residuals
from crosslayer.store import ActivationStore
from crosslayer.transcoder import AffineTranscoder

if TYPE_CHECKING:
    from sae_lens import SAE

EMERGENCE_DEFINITIONS: dict[str, str] = {
    "emergence matrix": "for every scored feature and every layer (hook_embed, then every "
    "blocks.L.hook_resid_post up to the target), the pooled out-of-fold R² of a ridge probe "
    "from that layer (alpha per feature and fold by grouped inner CV) and the AUROC of its "
    "out-of-fold prediction against the feature being active (> 0); folds by document over "
    "all rows of the sweep store",
    "emergence layer": "the first layer (forward order) whose score reaches frac × the "
    "feature's best score at or before the target; scores are R² (or AUROC − 0.5)",
    "never predictable": "a scored feature whose best score over the layers is <= 0: it has "
    "no emergence layer and is counted, not averaged in",
    "across seeds": "per seed of each dictionary, the median emergence layer (block index: "
    "the floor of the median layer column over its features that emerged) and the share "
    "never predictable, on its matrix features: seed 0's are all its scored features, a "
    "further seed's a random sample (numpy default_rng(seed)) of at most "
    "emergence.seed_features of its scored features, fitted with the same layers, folds, "
    "alphas and minimum-positives rule; mean over seeds and t 95% CI over seeds (cut to the "
    "range: layers from embed to the target, shares to [0, 1]); differences between "
    "dictionaries paired by seed: taxonomy.differences",
    "scored": "passes the minimum-positives rule (crossfit.min_pos_fit active and inactive "
    "tokens in every training set, crossfit.min_pos_score in all); the others are counted "
    "per reason",
}
TAXONOMY_DEFINITIONS: dict[str, str] = {
    "token-determined": "cross-fitted token-lookup R² >= emergence.token_r2_min and above its "
    "permutation null level",
    "positional": "not token-determined; cross-fitted lookup R² by position in the context "
    ">= emergence.position_r2_min and above its permutation null level",
    "short-context": "neither of the above; out-of-fold ridge R² from the current and "
    "emergence.context_k previous tokens' source embeddings (top emergence.context_dims "
    "principal components each, lags never cross a context) >= emergence.context_r2_min",
    "long-context": "none of the above: what predicts it is more than the last k+1 tokens",
    "token entropy": "entropy (bits) of the token distribution over the feature's "
    "emergence.top_n largest activations; top-token share: the share of those on its most "
    "common token",
    "seed-level CI": "over the S seeds of a dictionary, each seed's value once: mean ± "
    "t_{0.975, S-1} · sd / √S (sd with ddof 1), cut to the quantity's range (shares [0, 1], "
    "entropy [0, log2 top_n], layers embed … target; a difference to ± that range's width); "
    "null with a note when fewer than 2 seeds have a value",
    "interpretability across seeds": "per seed, the median over its scored features of the "
    "token entropy (top-token share); mean_of_medians over seeds and its seed-level CI",
    "differences": "a − b for the dictionaries a, b (residual − baseline, placebo − baseline, "
    "residual − placebo), per seed k (seed k of a against seed k of b: the same training "
    "seed) of the per-seed value (median token entropy, median top-token share, class share, "
    "median emergence layer, share never predictable); mean and seed-level CI over the "
    "seeds where both have a value",
}
# the differences between dictionaries, a − b, when both were measured
PAIRS: tuple[tuple[str, str], ...] = (
    ("residual", "baseline"),
    ("placebo", "baseline"),
    ("residual", "placebo"),
)


@dataclass(frozen=True)
class EmergenceInputs:
    """What the emergence stage measures: the sweep store's rows, the run's hooks, the SAEs
    and what each one reads.

    ``residual_saes``: the SAEs trained on residuals (encoded on target − transcoder(source));
    every other SAE is encoded on the target, unless ``inputs[name]`` is given: a function
    of the sweep store's (source rows, target rows) giving that SAE's input rows (e.g. the
    placebo's target minus its removal).

    ``seed_saes``: per name, that dictionary's seeds >= 1 (``sae_training.seeds`` − 1 SAEs),
    each encoded on the same input as seed 0: their taxonomy is measured, and the matrix of
    a random sample of at most ``emergence.seed_features`` of their scored features (the
    full matrix stays on seed 0, its cost), so the shares, the median top-token measures
    and the median emergence layer get a seed-level CI.
    """

    sweep_store: ActivationStore
    hooks: Hooks
    saes: Mapping[str, SAE[Any]]
    transcoder: AffineTranscoder
    residual_saes: tuple[str, ...] = ("residual",)
    inputs: Mapping[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None
    seed_saes: Mapping[str, Sequence[SAE[Any]]] | None = None


def run_emergence(run: Run, what: EmergenceInputs) -> dict[str, Any]:
    """The emergence matrix and taxonomy of every SAE of ``what``, on the sweep store's rows.

    Returns ``{"emergence": ..., "taxonomy": ...}``
    (the results.json sections), ``"features"``: per SAE the columns ``feature``,
    ``emergence_layer`` (block index, -1 for hook_embed, None: never predictable or not
    scored), ``emergence_hook``, ``class`` and the top-token measures, one entry per feature
    of the SAE; and ``"plots"``: the PNG files written into the run directory.
    """
    measured = run.cached(
        JsonFile(run.dirs.emergence),
        lambda: measure(run, what),
        ("emergence", f"emergence: {len(what.saes)} SAEs' features from every layer"),
    )
    return summarise(run, measured)


def layer_hooks(sweep_store: ActivationStore, hooks: Hooks) -> list[str]:
    """The sweep's hooks (source, then every resid_post up to the target), all in the store."""
    names = sweep_hooks(hooks.source, hooks.target)
    missing = [h for h in names if h not in sweep_store.hooks]
    if missing:
        raise CrosslayerError(
            f"the sweep store {sweep_store.path} lacks {', '.join(missing)}",
            "rerun with the sweep enabled (sweep.enabled: true) so it holds every layer",
        )
    return names


def measure(run: Run, what: EmergenceInputs) -> dict[str, Any]:
    """Everything measured (the checkpoint): scores per scored feature, counts per feature."""
    cfg, cf = run.cfg.emergence, run.cfg.crossfit
    sweep_store, hooks, saes, inputs = what.sweep_store, what.hooks, what.saes, what.inputs
    names = layer_hooks(sweep_store, hooks)
    folds = store_folds(run, sweep_store)  # the run's fold of each of the sweep's documents
    X = sweep_store.activations(hooks.source).to_numpy(dtype=np.float32)
    Y = sweep_store.activations(hooks.target).to_numpy(dtype=np.float32)
    codes = {}
    seed_codes: dict[tuple[str, int], sp.csc_matrix] = {}  # (name, seed index >= 1) -> codes
    kinds: dict[str, str] = {}
    for name, sae in saes.items():
        if inputs is not None and name in inputs:
            x, kinds[name] = np.asarray(inputs[name](X, Y), dtype=np.float32), "given"
        elif name in what.residual_saes:
            x, kinds[name] = residuals(what.transcoder, X, Y), "residual"
        else:
            x, kinds[name] = Y, "target"
        codes[name] = encode_sparse(sae, x)
        for k, other in enumerate((what.seed_saes or {}).get(name, ()), start=1):
            seed_codes[(name, k)] = encode_sparse(other, x)
    del Y
    F = sp.hstack(list(codes.values()), format="csc")
    alphas = tuple(cfg.alphas) if cfg.alphas else EMERGENCE_ALPHAS
    layers = {h: sweep_store.activations(h) for h in names}
    matrix = partial(
        emergence_matrix,
        layers,
        fold_ids=folds,
        alphas=alphas,
        min_pos_fit=cf.min_pos_fit,
        min_pos_score=cf.min_pos_score,
        device=run.cfg.device,
        progress=run.say,
    )
    # The further seeds' sampled features join seed 0's in one matrix call: each layer's
    # eigendecompositions then serve them all (a second call repeated them per layer).
    extra = _seed_samples(run, seed_codes, folds)
    both = matrix(sp.hstack([F, extra.columns], format="csc") if extra.columns.shape[1] else F)
    mat = _first(both, F.shape[1])
    sampled = (both.r2[F.shape[1] :], both.auroc[F.shape[1] :])
    scored = np.flatnonzero(mat.scorable)
    run.say(f"emergence: taxonomy of {scored.size:,} scored features")
    embed = layers.get("hook_embed", X)
    taxonomy = partial(
        taxonomy_scores,
        fold_ids=folds,
        tokens=sweep_store.tokens,
        positions=sweep_store.positions,
        embed=embed,
        context_ids=sweep_store.context_ids,
        k=cfg.context_k,
        dims=cfg.context_dims,
        alphas=alphas,
        n_permutations=cfg.n_permutations,
        seed=run.cfg.seed,
        device=run.cfg.device,
    )
    tax = taxonomy(F[:, scored])
    top = top_token_stats(F, sweep_store.tokens, cfg.top_n)
    out: dict[str, Any] = {
        "hooks": names,
        "n_tokens": len(folds),
        "n_docs": len(np.unique(sweep_store.doc_ids)),
        "n_folds": cf.n_folds,
        "alphas": list(alphas),
        "saes": {},
    }
    start = 0
    for name, f in codes.items():
        cols = np.arange(start, start + f.shape[1])
        start += f.shape[1]
        mine = np.isin(scored, cols)
        idx = scored[mine]
        out["saes"][name] = {
            "input": kinds[name],
            "n_features": int(f.shape[1]),
            "status": mat.status[cols].tolist(),
            "n_pos": mat.n_pos[cols],
            "scored": idx - cols[0],
            "r2": mat.r2[idx],
            "auroc": mat.auroc[idx],
            "alpha": mat.alpha[idx],
            **_columns(tax, top, mine, cols),
            "top_token": top.top_token[cols],
            "n_top": top.n_top[cols],
            "seeds": [],
        }
    for (name, k), m in _seed_taxonomy(
        run, seed_codes, extra, sampled, sweep_store.tokens, taxonomy
    ).items():
        out["saes"][name]["seeds"].append({"seed": k, **m})
    return out


@dataclass(frozen=True)
class _SeedSamples:
    """The further seeds' scored features and the sample of them that gets a matrix row."""

    F: sp.csc_matrix  # every further seed's codes side by side, in the order of ``codes``
    scored: np.ndarray  # columns of F passing the minimum-positives rule
    picks: dict[tuple[str, int], tuple[int, np.ndarray]]  # key -> (first column, sample)
    columns: sp.csc_matrix  # the sampled columns of F, in the order of ``picks``


def _seed_samples(
    run: Run, codes: Mapping[tuple[str, int], sp.csc_matrix], folds: np.ndarray
) -> _SeedSamples:
    """Each further seed's scored features (the matrix's minimum-positives rule) and a random
    sample of at most ``emergence.seed_features`` of them (:func:`sample_features`, one
    generator seeded by the run's seed, drawn in the order of ``codes``)."""
    cf, n_sample = run.cfg.crossfit, run.cfg.emergence.seed_features
    n = len(folds)
    if not codes:
        empty = sp.csc_matrix((n, 0), dtype=np.float32)
        return _SeedSamples(empty, np.zeros(0, dtype=np.int64), {}, empty)
    F = sp.hstack(list(codes.values()), format="csc")
    rule = count_positives(as_columns(F), folds, min_fit=cf.min_pos_fit, min_score=cf.min_pos_score)
    scored = np.flatnonzero(np.asarray(rule.status) == "ok")
    rng = np.random.default_rng(run.cfg.seed)
    picks: dict[tuple[str, int], tuple[int, np.ndarray]] = {}
    start = 0
    for key, f in codes.items():
        cols = np.arange(start, start + f.shape[1])
        start += f.shape[1]
        if n_sample > 0:
            mine = scored[np.isin(scored, cols)] - cols[0]
            picks[key] = (int(cols[0]), sample_features(mine, n_sample, rng))
    sel = np.concatenate([c0 + p for c0, p in picks.values()]) if picks else np.zeros(0, int)
    return _SeedSamples(F, scored, picks, F[:, sel])


def _first(mat: EmergenceMatrix, m: int) -> EmergenceMatrix:
    """The first ``m`` features' rows of a matrix (the others were all scorable, so the
    exclusion counts are those of the first ``m``)."""
    return replace(
        mat,
        r2=mat.r2[:m],
        auroc=mat.auroc[:m],
        alpha=mat.alpha[:m],
        n_pos=mat.n_pos[:m],
        status=mat.status[:m],
    )


def _seed_taxonomy(
    run: Run,
    codes: Mapping[tuple[str, int], sp.csc_matrix],
    extra: _SeedSamples,
    sampled: tuple[np.ndarray, np.ndarray],
    tokens: np.ndarray,
    taxonomy: Callable[[sp.csc_matrix], TaxonomyScores],
) -> dict[tuple[str, int], dict[str, Any]]:
    """Taxonomy scores, top-token measures and sampled matrix rows of the extra seeds'
    features, per (name, k).

    Scored: the same minimum-positives rule as the matrix; every seed's scored features in
    one :func:`taxonomy_scores` call (one context design and one eigendecomposition per
    fold serve them all; each feature's scores depend on its column alone). ``sampled``:
    the ``r2``/``auroc`` rows of ``extra.picks``' features, in that order, from the matrix
    call they shared with seed 0's features.
    """
    if not codes:
        return {}
    F, scored = extra.F, extra.scored
    run.say(f"emergence: taxonomy of {scored.size:,} scored features of {len(codes)} more seeds")
    tax = taxonomy(F[:, scored])
    top = top_token_stats(F, tokens, run.cfg.emergence.top_n)
    out: dict[tuple[str, int], dict[str, Any]] = {}
    start = 0
    for key, f in codes.items():
        cols = np.arange(start, start + f.shape[1])
        start += f.shape[1]
        mine = np.isin(scored, cols)
        out[key] = {
            "n_features": int(f.shape[1]),
            "scored": scored[mine] - cols[0],
            **_columns(tax, top, mine, cols),
        }
    r2, auroc = sampled
    start = 0
    for key, (_, p) in extra.picks.items():
        rows = slice(start, start + p.size)
        start += p.size
        out[key] |= {"sampled": p, "r2": r2[rows], "auroc": auroc[rows]}
    return out


def sample_features(scored: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` of the feature indices ``scored``, drawn without replacement, sorted
    (all of them when there are at most ``n``; the generator is drawn from either way)."""
    scored = np.asarray(scored, dtype=np.int64)
    return np.sort(rng.choice(scored, size=min(n, scored.size), replace=False))


def _columns(
    tax: TaxonomyScores, top: TopTokenStats, mine: np.ndarray, cols: np.ndarray
) -> dict[str, np.ndarray]:
    """One dictionary's taxonomy scores (its scored features: ``mine`` of the scored columns)
    and top-token measures (all its columns ``cols``)."""
    return {
        "token_r2": tax.token_r2[mine],
        "token_null": tax.token_null[mine],
        "position_r2": tax.position_r2[mine],
        "position_null": tax.position_null[mine],
        "context_r2": tax.context_r2[mine],
        "token_entropy": top.token_entropy[cols],
        "top_token_share": top.top_token_share[cols],
    }


def _matrix(rows: Any, n_layers: int) -> np.ndarray:
    a = np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)
    return a.reshape(-1, n_layers)


def _describe(values: np.ndarray) -> dict[str, Any]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {"n": 0}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(med),
            "q25": float(q25), "q75": float(q75)}  # fmt: skip


def summarise(run: Run, measured: dict[str, Any]) -> dict[str, Any]:
    """Emergence layers, classes, counts, plots and per-feature columns from the checkpoint."""
    cfg = run.cfg.emergence
    hooks: list[str] = measured["hooks"]
    blocks = [-1 if h == "hook_embed" else int(h.split(".")[1]) for h in hooks]
    L = len(hooks)
    emergence: dict[str, Any] = {
        "definitions": EMERGENCE_DEFINITIONS,
        "store": "sweep_store",
        "hooks": hooks,
        "layers": blocks,
        "metric": cfg.metric,
        "frac": cfg.frac,
        "n_tokens": measured["n_tokens"],
        "n_docs": measured["n_docs"],
        "n_folds": measured["n_folds"],
        "alphas": measured["alphas"],
        "seed_features": cfg.seed_features,
        "saes": {},
    }
    taxonomy: dict[str, Any] = {
        "definitions": TAXONOMY_DEFINITIONS,
        "classes": list(CLASSES),
        "thresholds": {
            "token_r2_min": cfg.token_r2_min,
            "position_r2_min": cfg.position_r2_min,
            "context_r2_min": cfg.context_r2_min,
        },
        "context_k": cfg.context_k,
        "context_dims": cfg.context_dims,
        "top_n": cfg.top_n,
        "seeds": [run.cfg.seed],
        "note": "",
        "saes": {},
    }
    classify_ = partial(
        classify,
        token_min=cfg.token_r2_min,
        position_min=cfg.position_r2_min,
        context_min=cfg.context_r2_min,
    )
    features: dict[str, dict[str, Any]] = {}
    panels: dict[str, Panel] = {}
    # per dictionary, per quantity: {seed: value}, the per-seed values the differences pair
    values: dict[str, dict[str, dict[int, float | None]]] = {}
    bounds = _bounds(cfg.top_n, blocks)
    for name, m in measured["saes"].items():
        n_feat = int(m["n_features"])
        scored = np.asarray(m["scored"], dtype=np.int64)
        r2, auroc = _matrix(m["r2"], L), _matrix(m["auroc"], L)
        score = r2 if cfg.metric == "r2" else auroc
        em = emergence_layers(score, cfg.frac, CHANCE[cfg.metric])
        tax = _scores(m)
        cls = classify_(tax)
        n_pos = np.asarray(m["n_pos"], dtype=np.float64)
        density = n_pos / measured["n_tokens"]
        entropy, share = nan_array(m["token_entropy"]), nan_array(m["top_token_share"])
        # per-feature columns, every feature of the SAE
        layer_col: list[int | None] = [None] * n_feat
        hook_col: list[str | None] = [None] * n_feat
        class_col: list[str] = [UNSCORED] * n_feat
        for i, j in enumerate(scored):
            class_col[j] = str(cls[i])
            if em.index[i] >= 0:
                layer_col[j], hook_col[j] = blocks[em.index[i]], hooks[em.index[i]]
        features[name] = {
            "feature": list(range(n_feat)),
            "emergence_layer": layer_col,
            "emergence_hook": hook_col,
            "class": class_col,
            "token_entropy": entropy,
            "top_token_share": share,
        }
        status = np.asarray(m["status"], dtype=object)
        reasons = {r: int((status == r).sum()) for r in sorted(set(status.tolist())) if r != "ok"}
        emerged = em.index >= 0
        counts_at = np.bincount(em.index[emerged], minlength=L)
        emergence["saes"][name] = {
            "input": m["input"],
            "n_features": n_feat,
            "n_scored": int(scored.size),
            "excluded": reasons,
            "n_never_predictable": int(em.never.sum()),
            "n_emerged": int(emerged.sum()),
            "emergence_layer_counts": {h: int(c) for h, c in zip(hooks, counts_at, strict=True)},
            "median_emergence_layer": _median_layer(em, blocks),
            # medians: a few features with R² far below 0 would dominate a mean
            "median_r2_per_layer": np.nanmedian(r2, axis=0) if scored.size else [None] * L,
            "median_auroc_per_layer": np.nanmedian(auroc, axis=0) if scored.size else [None] * L,
        }
        counts = class_counts(cls)
        by_class: dict[str, Any] = {}
        for c in CLASSES:
            sel = cls == c
            e = em.index[sel & emerged]
            by_class[c] = {
                "n": int(sel.sum()),
                "n_never_predictable": int((sel & em.never).sum()),
                "median_emergence_layer": blocks[int(np.floor(np.median(e)))] if e.size else None,
                "token_entropy": _describe(entropy[scored][sel]),
                "top_token_share": _describe(share[scored][sel]),
            }
        per_seed = [_seed_entry(run.cfg.seed, scored.size, counts, entropy[scored], share[scored])]
        for extra in m.get("seeds") or []:  # checkpoints from before the seeds: seed 0 only
            e_scored = np.asarray(extra["scored"], dtype=np.int64)
            e_cls = classify_(_scores(extra))
            e_entropy, e_share = (
                nan_array(extra["token_entropy"]),
                nan_array(extra["top_token_share"]),
            )
            per_seed.append(_seed_entry(run.cfg.seed + int(extra["seed"]), e_scored.size,
                                        class_counts(e_cls), e_entropy[e_scored],
                                        e_share[e_scored]))  # fmt: skip
        seed0 = per_seed[0]  # the headline counts are seed 0's, its per-seed entry
        # the emergence layer per seed: seed 0 on all its scored features, a further seed on
        # its sampled ones (none in checkpoints from before emergence.seed_features, or 0)
        em_seed = [_emergence_seed(run.cfg.seed, em, blocks, "all scored features")]
        for extra in m.get("seeds") or []:
            if extra.get("sampled") is None:
                continue
            e_score = _matrix(extra["r2" if cfg.metric == "r2" else "auroc"], L)
            e_em = emergence_layers(e_score, cfg.frac, CHANCE[cfg.metric])
            em_seed.append(_emergence_seed(run.cfg.seed + int(extra["seed"]), e_em, blocks,
                                           "random sample of its scored features"))  # fmt: skip
        emergence["saes"][name]["per_seed"] = em_seed
        values[name] = _per_seed_values(per_seed, em_seed)
        emergence["saes"][name]["across_seeds"] = {
            q: seed_ci([values[name][q][sd] for sd in values[name][q]], bounds=bounds[q])
            for q in ("median_emergence_layer", "share_never_predictable")
        }
        taxonomy["saes"][name] = {
            "n_scored": seed0["n_scored"],
            "counts": seed0["counts"],
            "shares": seed0["shares"],
            "seeds": [p["seed"] for p in per_seed],
            "per_seed": per_seed,
            "across_seeds": across_seeds([p["counts"] for p in per_seed]),
            "interpretability_across_seeds": {
                m_: _mean_of_medians(values[name][f"{m_}_median"], bounds[f"{m_}_median"])
                for m_ in ("token_entropy", "top_token_share")
            },
            "by_class": by_class,
            "examples": _examples(cls, tax, em.index, em.best, scored, cfg.n_examples),
            "interpretability": {
                "token_entropy": _describe(entropy[scored]),
                "top_token_share": _describe(share[scored]),
            },
        }
        panels[name] = Panel(hooks, score - CHANCE[cfg.metric], em.index, tax.token_r2,
                             density[scored], cfg.metric, cfg.frac)  # fmt: skip
    n_seeds = {name: len(t["seeds"]) for name, t in taxonomy["saes"].items()}
    taxonomy["seeds"] = sorted({sd for t in taxonomy["saes"].values() for sd in t["seeds"]})
    if not n_seeds or max(n_seeds.values()) < 2:
        taxonomy["note"] = (
            f"one seed ({run.cfg.seed}): shares have no seed-level CI; run more seeds"
        )
    else:
        single = [name for name, k in n_seeds.items() if k < 2]
        taxonomy["note"] = (
            "classes per seed of each SAE (seed 0's in counts, shares, examples and the "
            "per-feature columns); across_seeds: mean share and t 95% CI over seeds"
            + (f"; one seed only, no CI: {', '.join(single)}" if single else "")
        )
    taxonomy["differences"] = _differences(values, bounds)
    emergence["plots"] = write_emergence_plots(panels, run.out)
    return {"emergence": emergence, "taxonomy": taxonomy, "features": features}


def _median_layer(em: EmergenceLayers, blocks: Sequence[int]) -> int | None:
    """The median emergence layer (block index) over the features that emerged: the floor
    of the median layer column (None: none emerged)."""
    e = em.index[em.index >= 0]
    return blocks[int(np.floor(np.median(e)))] if e.size else None


def _emergence_seed(
    seed: int, em: EmergenceLayers, blocks: Sequence[int], rows: str
) -> dict[str, Any]:
    """One seed's emergence summary, over the rows of its matrix (``rows`` says which)."""
    n = len(em.index)
    return {
        "seed": int(seed),
        "features": rows,
        "n_features": n,
        "n_emerged": int(em.emerged.sum()),
        "n_never_predictable": int(em.never.sum()),
        "median_emergence_layer": _median_layer(em, blocks),
        "share_never_predictable": float(em.never.sum() / n) if n else None,
    }


def _bounds(top_n: int, blocks: Sequence[int]) -> dict[str, tuple[float, float]]:
    """The range of each per-seed quantity, to which its seed-level CI is cut."""
    return {
        "token_entropy_median": (0.0, float(np.log2(top_n))),
        "top_token_share_median": (0.0, 1.0),
        "median_emergence_layer": (float(blocks[0]), float(blocks[-1])),
        "share_never_predictable": (0.0, 1.0),
        **{f"share.{c}": (0.0, 1.0) for c in CLASSES},
    }


def _per_seed_values(
    per_seed: Sequence[Mapping[str, Any]], em_seed: Sequence[Mapping[str, Any]]
) -> dict[str, dict[int, float | None]]:
    """Per quantity, ``{seed: value}`` of one dictionary (the taxonomy's seeds, and those
    with an emergence matrix)."""
    out: dict[str, dict[int, float | None]] = {
        f"{m}_median": {p["seed"]: p["interpretability"][m].get("median") for p in per_seed}
        for m in ("token_entropy", "top_token_share")
    }
    for c in CLASSES:
        out[f"share.{c}"] = {p["seed"]: p["shares"][c] if p["n_scored"] else None
                             for p in per_seed}  # fmt: skip
    for q in ("median_emergence_layer", "share_never_predictable"):
        out[q] = {e["seed"]: e[q] for e in em_seed}
    return out


def _mean_of_medians(
    by_seed: Mapping[int, float | None], bounds: tuple[float, float]
) -> dict[str, Any]:
    """The seed-level CI of one dictionary's per-seed medians."""
    ci = seed_ci(list(by_seed.values()), bounds=bounds)
    out = {"n_seeds": ci["n_seeds"], "mean_of_medians": ci["mean"], "ci95": ci["ci95"]}
    return out | {k: ci[k] for k in ("note", "n_missing") if k in ci}


def _differences(
    values: Mapping[str, Mapping[str, Mapping[int, float | None]]],
    bounds: Mapping[str, tuple[float, float]],
) -> dict[str, dict[str, Any]]:
    """``<a>_minus_<b>`` for each of ``PAIRS`` measured: per quantity, the per-seed
    differences paired by seed, their mean and seed-level CI (cut to ± the range's width)."""
    out: dict[str, dict[str, Any]] = {}
    for a, b in PAIRS:
        if a not in values or b not in values:
            continue
        entry: dict[str, Any] = {"share": {}}
        for q, by_seed in values[a].items():
            lo, hi = bounds[q]
            d = paired_difference(by_seed, values[b][q], bounds=(lo - hi, hi - lo))
            if q.startswith("share."):
                entry["share"][q.removeprefix("share.")] = d
            else:
                entry[q] = d
        out[f"{a}_minus_{b}"] = entry
    return out


def _scores(m: Mapping[str, Any]) -> TaxonomyScores:
    """The taxonomy scores of a checkpoint entry (one SAE, or one of its seeds)."""
    keys = ("token_r2", "token_null", "position_r2", "position_null", "context_r2")
    return TaxonomyScores(*(nan_array(m[k]) for k in keys))


def _seed_entry(
    seed: int, n_scored: int, counts: dict[str, int], entropy: np.ndarray, share: np.ndarray
) -> dict[str, Any]:
    """One seed's class counts and shares (of its scored features) and top-token measures."""
    return {
        "seed": int(seed),
        "n_scored": int(n_scored),
        "counts": counts,
        "shares": {c: counts[c] / max(1, n_scored) for c in CLASSES},
        "interpretability": {
            "token_entropy": _describe(entropy),
            "top_token_share": _describe(share),
        },
    }


def _examples(
    cls: np.ndarray,
    tax: TaxonomyScores,
    index: np.ndarray,
    best: np.ndarray,
    scored: np.ndarray,
    k: int,
) -> dict[str, list[int]]:
    """The ``k`` most typical features of each class (SAE feature indices).

    token-determined: highest token-lookup R²; positional: highest position R²; short-
    context: largest gain of the context ridge over the token lookup; long-context: latest
    emergence, then best predictability at the target side.
    """
    key = {
        TOKEN: -tax.token_r2,
        POSITIONAL: -tax.position_r2,
        SHORT: -(tax.context_r2 - tax.token_r2),
        LONG: -(index * 10.0 + np.nan_to_num(best, nan=-1.0)),
    }
    out: dict[str, list[int]] = {}
    for c in CLASSES:
        sel = np.flatnonzero(cls == c)
        order = sel[np.argsort(np.nan_to_num(key[c][sel], nan=np.inf), kind="stable")]
        out[c] = [int(scored[i]) for i in order[:k]]
    return out
