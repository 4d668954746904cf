"""Cross-fitting benchmark: every feature of a run scored out of fold, vs a scikit-learn loop.

Random data of a study-A run's shape: ``--tokens`` tokens in documents of ~125 tokens, X the
token embedding (``--vocab`` distinct rows drawn Zipf-like, as ``hook_embed`` has one row per
vocabulary entry; ``--distinct`` for a residual-stream-like X with no repeated rows), and
``--features`` sparse JumpReLU-like features of a hidden state that depends on the token and
on context noise (densities log-spaced 0.2 %-10 %). crosslayer cross-fits all of them (K
grouped folds, per-feature alpha / C by inner CV, token lookup); scikit-learn does the same
per feature (``Ridge`` over the alpha grid and inner folds, ``LogisticRegressionCV`` with the
same folds) on ``--sklearn-features`` features, and its time is extrapolated linearly.

    python -m benchmarks.bench_crossfit                      # 80k x 640, 2000 features
    python -m benchmarks.bench_crossfit --features 64 --sklearn-features 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV, Ridge
from sklearn.preprocessing import StandardScaler

from crosslayer.crossfit import (
    CrossFitLogistic,
    CrossFitRidge,
    count_positives,
    grouped_folds,
    token_lookup_r2,
)


def make_data(n: int, d: int, m: int, vocab: int, distinct: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    docs = np.repeat(np.arange(n // 125 + 1), 125)[:n]
    p = 1.0 / np.arange(1, vocab + 1)
    tok = rng.choice(vocab, size=n, p=p / p.sum())
    emb = rng.normal(size=(vocab, d)).astype(np.float32) * rng.uniform(0.2, 3, d).astype(np.float32)
    x = emb[tok] + (rng.normal(size=(n, d)).astype(np.float32) if distinct else 0)
    h = (emb[tok] / emb.std(0)) @ (rng.normal(size=(d, m)).astype(np.float32) / np.sqrt(d))
    h += rng.normal(size=(n, m)).astype(np.float32)  # context the token does not carry
    density = np.logspace(np.log10(0.002), np.log10(0.1), m)
    thr = np.quantile(h, 1 - density, axis=0).diagonal().astype(np.float32)
    f = np.where(h > thr, h, 0).astype(np.float32)
    return x.astype(np.float32), f, docs, tok


def sklearn_feature(x, f, folds, alphas, Cs, j):
    """One feature the slow way: the same nested grouped CV with scikit-learn."""
    K = folds.max() + 1
    for k in range(K):
        T = folds != k
        for i in range(K):  # ridge: every alpha on every inner split
            if i == k:
                continue
            tr, va = T & (folds != i), folds == i
            sc = StandardScaler().fit(x[tr])
            xtr, xva = sc.transform(x[tr]), sc.transform(x[va])
            for a in alphas:
                Ridge(alpha=a * tr.sum()).fit(xtr, f[tr, j]).predict(xva)
        sc = StandardScaler().fit(x[T])
        xs = sc.transform(x[T])
        splits = [
            (np.nonzero(folds[T] != i)[0], np.nonzero(folds[T] == i)[0]) for i in range(K) if i != k
        ]
        LogisticRegressionCV(
            Cs=list(Cs), cv=splits, class_weight="balanced", scoring="neg_log_loss", max_iter=1000
        ).fit(xs, f[T, j] > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=80_000)
    ap.add_argument("--dim", type=int, default=640)
    ap.add_argument("--features", type=int, default=2000)
    ap.add_argument("--vocab", type=int, default=12_000)
    ap.add_argument("--distinct", action="store_true")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--sklearn-features", type=int, default=2)
    ap.add_argument("--Cs", type=float, nargs="+", default=None)
    ap.add_argument("--skip-logistic", action="store_true")
    args = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    x, f, docs, tok = make_data(args.tokens, args.dim, args.features, args.vocab, args.distinct)
    times: dict[str, float] = {}

    def timed(name: str, fn):
        t = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - t
        print(f"{name:>14}: {times[name]:7.1f} s", flush=True)
        return out

    folds = timed("folds", lambda: grouped_folds(docs, args.folds, seed=0))
    pc = timed("positives", lambda: count_positives(f, folds))
    ridge = timed("ridge", lambda: CrossFitRidge().fit(x, f, folds))
    lookup = timed("token lookup", lambda: token_lookup_r2(tok, f, folds, n_permutations=1))
    logit = None
    Cs = tuple(args.Cs) if args.Cs else CrossFitLogistic().Cs
    if not args.skip_logistic:
        logit = timed("logistic", lambda: CrossFitLogistic(Cs=Cs).fit(x, f, folds))
        timed("logistic C=1", lambda: CrossFitLogistic(Cs=(1.0,)).fit(x, f, folds))
        times.pop("logistic C=1")  # shown for the cost of the C search, not in the total
    total = sum(times.values())
    print(f"{'crosslayer':>14}: {total:7.1f} s for {args.features} features", flush=True)
    if args.sklearn_features:
        t = time.perf_counter()
        for j in np.linspace(0, args.features - 1, args.sklearn_features).astype(int):
            sklearn_feature(x, f, folds, CrossFitRidge().alphas, Cs, j)
        per = (time.perf_counter() - t) / args.sklearn_features
        print(
            f"{'scikit-learn':>14}: {per:7.1f} s per feature -> {per * args.features:9.0f} s "
            f"for {args.features} (extrapolated)",
            flush=True,
        )
    print(f"scorable features {pc.scorable.sum()} / {args.features}; excluded {pc.excluded}")
    print(
        f"ridge R² median {np.nanmedian(ridge.r2_):.3f}; token-lookup R² median "
        f"{np.nanmedian(lookup.r2):.3f} (null max {np.nanmax(lookup.null_level):.3f})"
    )
    if logit is not None:
        print(
            f"logistic: balanced accuracy median {np.nanmedian(logit.balanced_accuracy_):.3f}, "
            f"AUROC median {np.nanmedian(logit.auroc_):.3f}, not converged "
            f"{logit.n_not_converged_}, outer iterations median {np.median(logit.n_iter_):.0f}"
        )


if __name__ == "__main__":
    main()
