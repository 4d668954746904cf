"""Benchmark: the seed study's scikit-learn probe with numpy's and scipy's OpenBLAS on one
thread (the default) against their thread pools as they are, on a run's store and SAE.

    python -m benchmarks.bench_study_protocol RUN_DIR [--features 10]

Same 10 features (alive ones of the run's baseline SAE, seeded) and the study's own protocol
(``crosslayer.probes.study_protocol_probe``: first 15,000 tokens, balanced draw, 80/20 split),
one process, the two settings alternated.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from crosslayer.probes import study_protocol_probe
from crosslayer.sae import load_sae
from crosslayer.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--features", type=int, default=10)
    a = ap.parse_args()
    config = json.loads((a.run / "config.json").read_text())["config"]
    n = config["probes"]["study_tokens"]
    store = open_store(a.run / "store")
    target = next(h for h in store.hooks if h != config["source"])
    X = np.asarray(store.activations(config["source"]).to_numpy()[:n], dtype=np.float32)
    Y = torch.from_numpy(np.asarray(store.activations(target).to_numpy()[:n], dtype=np.float32))
    with torch.no_grad():
        F = load_sae(a.run / "saes" / "baseline").encode(Y).numpy()
    alive = np.flatnonzero((F > 0.1).sum(0) >= 20)
    pick = np.random.default_rng(0).choice(alive, a.features, replace=False)
    print(f"{n:,} tokens, {a.features} features, load average {os.getloadavg()}")
    print("| BLAS threads | s for the features | accuracies |\n|---|---|---|")
    for threads in (1, None, 1, None):
        t = time.perf_counter()
        acc = [study_protocol_probe(X, F[:, j], blas_threads=threads)["accuracy"] for j in pick]
        label = "1 (default)" if threads == 1 else "as they are (2)"
        print(f"| {label} | {time.perf_counter() - t:.2f} | {np.round(acc, 4).tolist()} |")


if __name__ == "__main__":
    main()
