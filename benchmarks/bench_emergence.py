"""Emergence benchmark: the features x layers matrix on random data of a default run's shape.

``--tokens`` tokens in documents of 125, ``--layers`` layers of ``--dim`` dimensions (each a
mix of a shared 64-dim latent, growing with depth, and Gaussian noise; generated one layer
at a time, so memory holds one layer), ``--features`` sparse features (ReLU of the latent's
projections minus a threshold, densities log-spaced 0.2 %-10 %), K = 5 folds by document.
Times :func:`crosslayer.emergence.emergence_matrix` (ridge R² with per-feature alpha by
grouped inner CV, and out-of-fold AUROC, for every feature and layer) and, with
``--taxonomy``, the taxonomy's three cross-fitted scores.

    python -m benchmarks.bench_emergence                       # 80k x 640, 14 layers, 2048
    python -m benchmarks.bench_emergence --tokens 20000 --layers 3 --features 512
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator, Mapping

import numpy as np
import scipy.sparse as sp
import torch

from crosslayer.crossfit import grouped_folds
from crosslayer.emergence import emergence_matrix, taxonomy_scores


class Layers(Mapping[str, np.ndarray]):
    """Layer activations made on access (seeded, the last one kept): one in memory."""

    def __init__(self, z: np.ndarray, n_layers: int, d: int, seed: int) -> None:
        self.z, self.d, self.seed = z, d, seed
        self.hooks = ["hook_embed", *[f"blocks.{i}.hook_resid_post" for i in range(n_layers - 1)]]
        self._last: tuple[str, np.ndarray] | None = None

    def __getitem__(self, hook: str) -> np.ndarray:
        if self._last is None or self._last[0] != hook:
            li = self.hooks.index(hook)
            rng = np.random.default_rng(self.seed + li)
            mix = rng.normal(size=(self.z.shape[1], self.d)).astype(np.float32)
            x = rng.normal(size=(len(self.z), self.d)).astype(np.float32)
            x += (li / len(self.hooks)) * (self.z @ mix)
            self._last = (hook, x)
        return self._last[1]

    def __iter__(self) -> Iterator[str]:
        return iter(self.hooks)

    def __len__(self) -> int:
        return len(self.hooks)


def make_features(z: np.ndarray, m: int, seed: int) -> sp.csc_matrix:
    rng = np.random.default_rng(seed)
    h = z @ rng.normal(size=(z.shape[1], m)).astype(np.float32) / np.sqrt(z.shape[1])
    h += rng.normal(size=h.shape).astype(np.float32)
    density = np.logspace(np.log10(0.002), np.log10(0.1), m)
    thr = np.array([np.quantile(h[:, j], 1 - density[j]) for j in range(m)], dtype=np.float32)
    return sp.csc_matrix(np.where(h > thr, h - thr, 0).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=80_000)
    ap.add_argument("--dim", type=int, default=640)
    ap.add_argument("--layers", type=int, default=14)
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--taxonomy", action="store_true")
    a = ap.parse_args()
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    rng = np.random.default_rng(0)
    n = a.tokens
    z = rng.normal(size=(n, 64)).astype(np.float32)
    F = make_features(z, a.features, 1)
    docs = np.arange(n) // 125
    folds = grouped_folds(docs, a.folds, seed=0)
    layers = Layers(z, a.layers, a.dim, seed=2)
    # CPU time beside wall time: on a shared machine the wall time measures the neighbours
    t0, c0 = time.perf_counter(), time.process_time()
    res = emergence_matrix(layers, F, folds)
    t_matrix, c_matrix = time.perf_counter() - t0, time.process_time() - c0
    print(f"matrix: {int(res.scorable.sum())} scored of {a.features} features x {a.layers} "
          f"layers, {n} tokens, d={a.dim}: {t_matrix:.1f} s wall, {c_matrix:.1f} s CPU "
          f"({c_matrix / a.layers:.1f} s CPU per layer)", flush=True)  # fmt: skip
    if a.taxonomy:
        t0, c0 = time.perf_counter(), time.process_time()
        taxonomy_scores(
            F[:, np.flatnonzero(res.scorable)],
            folds,
            tokens=rng.integers(0, 12_000, n),
            positions=np.arange(n) % 125,
            embed=layers["hook_embed"],
            context_ids=docs,
        )
        print(f"taxonomy scores: {time.perf_counter() - t0:.1f} s wall, "
              f"{time.process_time() - c0:.1f} s CPU", flush=True)  # fmt: skip
    print(f"load average at the end {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
