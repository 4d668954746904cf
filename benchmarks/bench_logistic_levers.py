"""Logistic-probe settings on a real run: time, iterations and score changes of each setting.

Reads a study A run directory (its store and baseline SAE, as ``bench_probes_real`` does),
draws a seeded sample of features with at least 600 active and 600 inactive tokens, fits
``CrossFitLogistic(C_rule="ridge", **setting)`` for every setting given as JSON, and prints
each one's time, mean balanced accuracy, mean iterations and non-converged fits, then the
balanced-accuracy and AUROC differences of every setting from the first. Run it once per
code version (e.g. before and after a change) with the same arguments to compare versions.

    python -m benchmarks.bench_logistic_levers RUN 300 '{"tol": 1e-4}' \\
        '{"tol": 1e-4, "warm_start": true}'
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_probes_real import load
from crosslayer.crossfit import CrossFitLogistic, grouped_folds
from crosslayer.crossfit.stats import SparseColumns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("features", type=int)
    ap.add_argument("settings", nargs="+", help="JSON keyword arguments of CrossFitLogistic")
    args = ap.parse_args()
    X, f, docs, _ = load(args.run, "baseline")
    folds = grouped_folds(docs, 5, 0)
    counts = np.asarray((f > 0).sum(0)).ravel()
    cand = np.flatnonzero((counts > 600) & (counts < len(docs) - 600))
    rng = np.random.default_rng(0)
    cols = np.sort(rng.choice(cand, min(args.features, cand.size), replace=False))
    F = SparseColumns(f[:, cols])
    print(f"{len(cols)} features, load {os.getloadavg()[0]:.1f}", flush=True)
    fits = []
    for spec in args.settings:
        t = time.perf_counter()
        m = CrossFitLogistic(C_rule="ridge", **json.loads(spec)).fit(X, F, folds)
        print(
            f"{spec}: {time.perf_counter() - t:.1f} s, mean balanced accuracy "
            f"{np.nanmean(m.balanced_accuracy_):.5f}, mean iterations {m.n_iter_.mean():.1f}, "
            f"not converged {m.n_not_converged_}",
            flush=True,
        )
        fits.append(m)
    for spec, m in zip(args.settings[1:], fits[1:], strict=True):
        d = np.abs(m.balanced_accuracy_ - fits[0].balanced_accuracy_)
        a = np.abs(m.auroc_ - fits[0].auroc_)
        print(
            f"{spec} vs {args.settings[0]}: |Δ balanced accuracy| median {np.nanmedian(d):.1e}, "
            f"max {np.nanmax(d):.1e}; |Δ AUROC| max {np.nanmax(a):.1e}"
        )


if __name__ == "__main__":
    main()
