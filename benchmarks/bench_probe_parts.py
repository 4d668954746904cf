"""Time the cross-fitted logistic probes and the token lookup on a real run's features.

The A/B of benchmarks/results/crossfit_real.md ("the probes' bookkeeping"): run it once with
this checkout and once with an older ``src`` first on ``PYTHONPATH``, one after the other on
a quiet box::

    python -m benchmarks.bench_probe_parts RUN --logistic 512 --token 128
    PYTHONPATH=/path/to/old/src python -m benchmarks.bench_probe_parts RUN --logistic 512 ...

``--logistic N``: N baseline features of density > 0.5% drawn at random (seed 0), the ridge
rule's C from one ridge pass on their labels (untimed), then ``CrossFitLogistic(C_rule="ridge",
tol=1e-4)`` timed. ``--token N``: the first N features with at least 150 active tokens,
``token_lookup_r2`` with 5 permutations timed on one torch thread. ``--ridge``: study A's ridge
pass (every feature with >= 100 active tokens and its 0/1 labels, the 17-alpha grid) with
the inner-CV path of one float32 product per alpha (the previous default), of one float64
product per alpha (the reference), and by partial fractions (the default: one float64
product for the grid), with the agreement of alphas and R² against the reference::

    python -m benchmarks.bench_probe_parts RUN --ridge
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_probes_real import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--logistic", type=int, default=0)
    ap.add_argument("--token", type=int, default=0)
    ap.add_argument("--ridge", action="store_true")
    args = ap.parse_args()

    from crosslayer.crossfit import CrossFitLogistic, CrossFitRidge, grouped_folds, token_lookup_r2
    from crosslayer.crossfit.stats import SparseColumns

    X, f, docs, tokens = load(args.run, "baseline")
    folds = grouped_folds(docs, 5, 0)
    n_pos = np.asarray((f > 0).sum(0)).ravel()
    if args.logistic:
        torch.set_num_threads(2)
        rng = np.random.default_rng(0)
        cand = np.flatnonzero(n_pos / f.shape[0] > 0.005)
        cols = np.sort(rng.choice(cand, args.logistic, replace=False))
        labels = SparseColumns((f[:, cols] > 0).astype(np.float32))
        alpha = CrossFitRidge().fit(X, labels, folds).alpha_
        t = time.perf_counter()
        est = CrossFitLogistic(C_rule="ridge", tol=1e-4)
        est.fit(X, SparseColumns(f[:, cols]), folds, label_alpha=alpha)
        print(f"logistic, {cols.size} features: {time.perf_counter() - t:.1f} s, "
              f"mean iterations {est.n_iter_.mean():.2f}")  # fmt: skip
    if args.ridge:
        import scipy.sparse as sp

        torch.set_num_threads(2)
        cols = np.flatnonzero(n_pos >= 100)
        targets = SparseColumns(sp.hstack([f[:, cols], (f[:, cols] > 0).astype(np.float32)]))
        fits = {}
        for label, kw in (("dense float32", {"path": "dense", "path_dtype": "float32"}),
                          ("dense float64", {"path": "dense"}),
                          ("fractions float64", {})):  # fmt: skip
            t = time.perf_counter()
            fits[label] = CrossFitRidge(**kw).fit(X, targets, folds)
            print(f"ridge, {cols.size} features + labels, path {label}: "
                  f"{time.perf_counter() - t:.1f} s")  # fmt: skip
        ref = fits["dense float64"]
        for label, est in fits.items():
            moved = int((est.alpha_ != ref.alpha_).sum())
            dr2 = float(np.nanmax(np.abs(est.r2_ - ref.r2_)))
            print(f"  {label} vs dense float64: {moved} of {ref.alpha_.size} alphas differ, "
                  f"max |R² diff| {dr2:.2e}")  # fmt: skip
    if args.token:
        torch.set_num_threads(1)
        cols = np.flatnonzero(n_pos >= 150)[: args.token]
        t = time.perf_counter()
        token_lookup_r2(tokens, SparseColumns(f[:, cols]), folds, n_permutations=5)
        print(f"token lookup, {cols.size} features: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
