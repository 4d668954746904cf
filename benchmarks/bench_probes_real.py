"""Cross-fitted probes on a real run: speed against scikit-learn, the C rule against grouped CV,
and the measurements behind the defaults (folds, minimum positives).

Reads a study A run directory (its store and its baseline SAE), scores every alive feature the
way study A does (``crosslayer.experiments.study_a.features.score_features``: ridge R², logistic
probes with C from the ridge rule, token lookup), and then

* ``--sklearn-features N``: the same cross-fitted probes of N scorable features with
  scikit-learn's per-feature loop (``StandardScaler`` + ``Ridge`` + ``LogisticRegression(C,
  class_weight="balanced")`` per fold, at crosslayer's chosen alpha and C), timed and
  extrapolated linearly to all features, and the agreement of the scores;
* ``--cv-features N``: the ridge rule for C against the grouped inner CV over ``Cs`` on N
  scorable features (``CrossFitLogistic(C_rule="cv")``): balanced accuracy and AUROC
  differences;
* ``--second-seed``: every score again with folds from another seed; the spread of a
  feature's scores between the two fold draws, binned by the active tokens it rests on (the
  measurement behind ``crossfit.min_pos_score``) and the folds' count.

    python -m benchmarks.bench_probes_real RUN --sklearn-features 4 --cv-features 100
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch


def load(run: Path, sae_name: str) -> tuple[np.ndarray, sp.csc_matrix, np.ndarray, np.ndarray]:
    """Source activations, SAE features, doc ids and token ids of every store row."""
    from crosslayer.experiments.study_a.saes import encode_sparse
    from crosslayer.sae import load_sae
    from crosslayer.store import open_store

    cfg = json.loads((run / "config.json").read_text())["config"]
    store = open_store(run / "store")
    src = cfg["source"]
    tgt = next(h for h in store.hooks if h != src)
    X = store.activations(src).to_numpy().astype(np.float32)
    Y = store.activations(tgt).to_numpy().astype(np.float32)
    f = encode_sparse(load_sae(run / "saes" / sae_name), Y)
    return X, f, np.asarray(store.doc_ids), np.asarray(store.tokens)


class _Run:
    """The little of study A's Run that score_features reads."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def say(self, message: str) -> None:
        print(f"  {message}", flush=True)


def sklearn_feature(
    X: np.ndarray, y: np.ndarray, folds: np.ndarray, alpha: np.ndarray, C: np.ndarray
) -> tuple[float, float, float]:
    """One feature's cross-fitted ridge R², balanced accuracy and AUROC with scikit-learn."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    pred, z = np.empty(len(y)), np.empty(len(y))
    active = y > 0
    for k in range(int(folds.max()) + 1):
        T, V = folds != k, folds == k
        sc = StandardScaler().fit(X[T])
        xt, xv = sc.transform(X[T]), sc.transform(X[V])
        pred[V] = Ridge(alpha=alpha[k] * T.sum()).fit(xt, y[T]).predict(xv)
        lr = LogisticRegression(C=C[k], class_weight="balanced", max_iter=1000, tol=1e-6)
        lr.fit(xt, active[T])
        zt = lr.decision_function(xt)
        # the training threshold that maximises balanced accuracy, as crosslayer chooses it
        cuts = np.unique(zt)
        ba = [0.5 * ((zt[active[T]] > c).mean() + (zt[~active[T]] <= c).mean()) for c in cuts]
        z[V] = lr.decision_function(xv) - cuts[int(np.argmax(ba))]
    r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    ba = 0.5 * ((z[active] > 0).mean() + (z[~active] <= 0).mean())
    return float(r2), float(ba), float(roc_auc_score(active, z))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--sae", default="baseline")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--max-features", type=int, default=None)
    ap.add_argument("--sklearn-features", type=int, default=0)
    ap.add_argument("--cv-features", type=int, default=0)
    ap.add_argument("--second-seed", action="store_true")
    ap.add_argument("--k-sweep", type=int, nargs="*", default=[], help="e.g. 3 5 10")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument(
        "--also",
        default=None,
        help="a second SAE of the run whose features (encoded on the same target rows) join "
        "the first's, e.g. to time --max-features 2048 fitted features",
    )
    ap.add_argument("--table", type=Path, default=None, help="the per-feature table (npz)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    from crosslayer.config import build_config
    from crosslayer.crossfit import CrossFitLogistic, grouped_folds
    from crosslayer.crossfit.stats import SparseColumns
    from crosslayer.experiments.study_a.features import score_features

    load_avg = os.getloadavg()[0]
    X, f, docs, tokens = load(args.run, args.sae)
    if args.also:
        f = sp.hstack([f, load(args.run, args.also)[1]], format="csc")
    cfg = build_config(
        "default",
        overrides={
            "crossfit": {"n_folds": args.folds},
            "probes": {"max_features": args.max_features},
        },
    )
    folds = grouped_folds(docs, args.folds, cfg.seed)
    print(
        f"{X.shape[0]:,} tokens x {X.shape[1]}, {f.shape[1]:,} latents, K={args.folds}, "
        f"load {load_avg:.1f}, threads {torch.get_num_threads()}",
        flush=True,
    )
    t0 = time.perf_counter()
    res = score_features(_Run(cfg), args.sae, X, f, folds, tokens)
    total = time.perf_counter() - t0
    tab = res["table"]
    probed = tab["probed"]
    if args.table:  # to compare two versions' per-feature scores
        np.savez(args.table, **{k: np.asarray(v) for k, v in tab.items() if k != "excluded_reason"})
    report: dict[str, Any] = {
        "tokens": int(X.shape[0]),
        "d": int(X.shape[1]),
        "n_alive": res["n_alive"],
        "n_scorable": res["n_scorable"],
        "n_probed": res["n_probed"],
        "excluded": res["excluded"],
        "timings": res["timings"],
        "total_s": round(total, 1),
        "n_not_converged": res["n_not_converged"],
        "summary": res["summary"],
        "load_at_start": round(load_avg, 1),
    }
    print(json.dumps(report, indent=1), flush=True)
    feats = tab["feature"][probed]
    rng = np.random.default_rng(0)

    if args.sklearn_features:
        from crosslayer.crossfit import CrossFitRidge

        pick = np.sort(rng.choice(feats.size, args.sklearn_features, replace=False))
        cols = feats[pick]
        F = SparseColumns(f[:, cols])
        # crosslayer's per-fold choices for these features (alpha and C of every fold)
        ridge = CrossFitRidge().fit(X, F, folds)
        logit = CrossFitLogistic(C_rule="ridge").fit(X, F, folds)
        t = time.perf_counter()
        sk = [
            sklearn_feature(X, f[:, j].toarray().ravel(), folds, ridge.alpha_[:, i], logit.C_[:, i])
            for i, j in enumerate(cols)
        ]
        per = (time.perf_counter() - t) / len(cols)
        ours = np.array(
            [
                [tab["r2"][probed][i], tab["balanced_accuracy"][probed][i], tab["auroc"][probed][i]]
                for i in pick
            ]
        )
        diff = np.abs(np.array(sk) - ours)
        report["sklearn"] = {
            "features": len(cols),
            "s_per_feature": round(per, 2),
            "extrapolated_s": round(per * feats.size, 1),
            "speedup": round(per * feats.size / total, 1),
            "max_abs_diff": {
                "r2": float(diff[:, 0].max()),
                "balanced_accuracy": float(diff[:, 1].max()),
                "auroc": float(diff[:, 2].max()),
            },
        }
        print(json.dumps(report["sklearn"], indent=1), flush=True)

    if args.cv_features:
        pick = np.sort(rng.choice(feats.size, min(args.cv_features, feats.size), replace=False))
        F = SparseColumns(f[:, feats[pick]])
        t = time.perf_counter()
        cv = CrossFitLogistic(C_rule="cv", Cs=tuple(cfg.probes.Cs)).fit(X, F, folds)
        t_cv = time.perf_counter() - t
        t = time.perf_counter()
        rule = CrossFitLogistic(C_rule="ridge").fit(X, F, folds)
        t_rule = time.perf_counter() - t
        dba = rule.balanced_accuracy_ - cv.balanced_accuracy_
        dau = rule.auroc_ - cv.auroc_
        report["rule_vs_cv"] = {
            "features": int(pick.size),
            "Cs": list(cfg.probes.Cs),
            "seconds": {"cv": round(t_cv, 1), "rule": round(t_rule, 1)},
            "balanced_accuracy": {
                "cv_mean": float(np.nanmean(cv.balanced_accuracy_)),
                "rule_mean": float(np.nanmean(rule.balanced_accuracy_)),
                "median_abs_diff": float(np.nanmedian(np.abs(dba))),
                "p95_abs_diff": float(np.nanquantile(np.abs(dba), 0.95)),
                "share_within_0.01": float(np.nanmean(np.abs(dba) <= 0.01)),
            },
            "auroc": {
                "cv_mean": float(np.nanmean(cv.auroc_)),
                "rule_mean": float(np.nanmean(rule.auroc_)),
                "median_abs_diff": float(np.nanmedian(np.abs(dau))),
                "p95_abs_diff": float(np.nanquantile(np.abs(dau), 0.95)),
            },
            # C_ holds float32-rounded grid values: compare with a tolerance
            "cv_C_share": {
                str(c): float(np.mean(np.isclose(cv.C_, c, rtol=1e-5))) for c in cfg.probes.Cs
            },
            "rule_C_quartiles": [float(q) for q in np.nanquantile(rule.C_, [0.25, 0.5, 0.75])],
        }
        print(json.dumps(report["rule_vs_cv"], indent=1), flush=True)

    if args.second_seed:
        folds2 = grouped_folds(docs, args.folds, cfg.seed + 1)
        res2 = score_features(_Run(cfg), args.sae, X, f, folds2, tokens)
        # the alive set depends on the folds (alive in every training set): align by feature
        t2 = res2["table"]
        _, i1, i2 = np.intersect1d(tab["feature"], t2["feature"], return_indices=True)
        tab = {key: v[i1] for key, v in tab.items()}
        res2["table"] = {key: v[i2] for key, v in t2.items()}
        both = tab["probed"] & res2["table"]["probed"]
        n_pos = tab["n_pos"][both]
        bins = [(20, 50), (50, 100), (100, 300), (300, 1000), (1000, 10**9)]
        spread = {}
        for key in ("balanced_accuracy", "auroc", "r2", "token_r2"):
            d = np.abs(tab[key][both] - res2["table"][key][both])
            spread[key] = {
                f"{lo}-{hi if hi < 10**9 else 'inf'}": {
                    "n": int(((n_pos >= lo) & (n_pos < hi)).sum()),
                    "median_abs_diff": float(np.nanmedian(d[(n_pos >= lo) & (n_pos < hi)]))
                    if ((n_pos >= lo) & (n_pos < hi)).any()
                    else None,
                }
                for lo, hi in bins
            }
            spread[key]["mean_shift"] = float(
                np.nanmean(tab[key][both]) - np.nanmean(res2["table"][key][both])
            )
        report["fold_seed_spread"] = spread
        print(json.dumps(spread, indent=1), flush=True)

    if args.k_sweep:
        from crosslayer.crossfit import CrossFitRidge, token_lookup_r2

        F = SparseColumns(f[:, feats])
        sweep = {}
        for K in args.k_sweep:
            fk = grouped_folds(docs, K, cfg.seed)
            t = time.perf_counter()
            r2 = CrossFitRidge().fit(X, F, fk).r2_
            t_r = time.perf_counter() - t
            t = time.perf_counter()
            tl = token_lookup_r2(tokens, F, fk, n_permutations=0).r2
            sweep[K] = {
                "ridge_s": round(t_r, 1),
                "token_s": round(time.perf_counter() - t, 1),
                "r2_median": float(np.nanmedian(r2)),
                "r2_mean": float(np.nanmean(r2)),
                "token_r2_median": float(np.nanmedian(tl)),
            }
            print(K, sweep[K], flush=True)
        report["k_sweep"] = sweep

    if args.out:
        args.out.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()
