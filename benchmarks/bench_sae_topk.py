"""Benchmark: the sparse TopK training step against sae-lens's dense one, on a run's store.

Trains the run's own SAE recipe (its ``sae_training`` config: TopK, width, k, batch, lr,
epochs) on the store's training split of the target hook, once with ``sparse_topk=True``
(crosslayer.sae.sparse_topk) and once with sae-lens's dense ``TopKTrainingSAE``, for each
seed, in one process; both use the fused Adam. Reports wall time per SAE, tokens/s and the
held-out EV / L0 / dead fraction of each, plus how far apart the two SAEs' reconstructions
are.

    python -m benchmarks.bench_sae_topk RUN_DIR [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crosslayer.sae import SAETrainConfig, evaluate_sae, train_sae
from crosslayer.store import open_store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a `crosslayer run` directory (its store and config)")
    ap.add_argument("--seeds", default="0,1")
    a = ap.parse_args()
    config = json.loads((a.run / "config.json").read_text())["config"]
    recipe = {k: v for k, v in config["sae_training"].items() if k != "seeds"}
    store = open_store(a.run / "store")
    hook = next(h for h in store.hooks if h != config["source"])
    x = torch.from_numpy(store.activations(hook).to_numpy()).float()
    split = torch.from_numpy(np.asarray(store.split) == 1)
    train, held = x[~split], x[split]
    print(
        f"{hook}: {train.shape[0]:,} train / {held.shape[0]:,} held-out tokens, recipe {recipe}, "
        f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        # first call in a process pays imports and thread start-up: not part of either figure
        train_sae(train[:4096], {**recipe, "epochs": 1}, Path(tmp, "warm"), progress=False)
        print("| seed | step | s | tokens/s | held-out EV | L0 | dead |")
        print("|---|---|---|---|---|---|---|")
        for seed in (int(s) for s in a.seeds.split(",")):
            recons, times = [], []
            for sparse in (True, False):
                cfg = SAETrainConfig(**recipe, seed=seed, sparse_topk=sparse)
                t = time.perf_counter()
                sae = train_sae(train, cfg, Path(tmp, f"{seed}_{sparse}"), progress=False)
                times.append(time.perf_counter() - t)
                tokens = train.shape[0] // cfg.batch_size * cfg.batch_size * cfg.epochs
                m = evaluate_sae(sae, held)
                with torch.no_grad():
                    recons.append(sae.decode(sae.encode(held)).double())
                print(
                    f"| {seed} | {'sparse' if sparse else 'dense (sae-lens)'} | {times[-1]:.1f} "
                    f"| {tokens / times[-1]:,.0f} | {m['explained_variance']:.4f} "
                    f"| {m['l0']:.1f} | {m['dead_fraction']:.4f} |",
                    flush=True,
                )
            rel = (recons[0] - recons[1]).norm() / (recons[1] - held.double().mean(0)).norm()
            print(
                f"seed {seed}: dense/sparse time {times[1] / times[0]:.2f}x; "
                f"|rec_sparse - rec_dense| / |rec_dense - mean| = {float(rel):.2e}",
                flush=True,
            )
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
