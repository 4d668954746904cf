"""Time the emergence matrix of a real run's seed-0 dictionaries (issue 15's budget).

Rebuilds the inputs of the emergence stage of a finished default run from its directory
(sweep store, seed-0 SAEs of baseline, residual and placebo, the ridge transcoder and the
placebo removal, the run's folds), then times :func:`crosslayer.emergence.emergence_matrix`
alone: every scored feature of the three seed-0 dictionaries from every layer. Compare its
scores with the run's checkpoint (``stages/emergence.json``) to check they are the stage's::

    python -m benchmarks.bench_emergence_real RUN
    python -m benchmarks.bench_emergence_real RUN --cross   # X'F alone: dense vs sparse
    python -m benchmarks.bench_emergence_real RUN --path dense  # one product per alpha

``--cross`` times only ``X'F`` of one layer (the target) for every feature block and fold:
the dense float32 product the fits use for dense targets against the per-fold CSR copies they
use for sparse ones (``TargetBlock.cross``), with their largest difference.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--cross", action="store_true", help="time X'F alone, dense vs sparse")
    ap.add_argument("--path", default="fractions", choices=["fractions", "dense"],
                    help="the inner-CV alpha path (CrossFitRidge's path)")  # fmt: skip
    ap.add_argument("--path-dtype", default="float64", choices=["float32", "float64"],
                    help="the path's projections (with --path dense, its products)")  # fmt: skip
    args = ap.parse_args()

    from sae_lens import SAE

    from crosslayer.crossfit import grouped_folds
    from crosslayer.emergence import emergence_matrix
    from crosslayer.experiments.study_a.hooks import sweep_hooks
    from crosslayer.experiments.study_a.placebo import PlaceboRemoval
    from crosslayer.experiments.study_a.saes import encode_sparse
    from crosslayer.experiments.study_a.transcoders import residuals
    from crosslayer.store import open_store
    from crosslayer.transcoder import AffineTranscoder

    cfg = json.loads((args.run / "config.json").read_text())["config"]
    hooks = json.loads((args.run / "results.json").read_text())["hooks"]
    source, target = hooks["source"], hooks["target"]
    sweep = open_store(args.run / "sweep_store")
    main_store = open_store(args.run / "store")
    # the run's fold rule (features.store_folds): folds of the main store's documents
    docs, first = np.unique(main_store.doc_ids, return_index=True)
    row_folds = grouped_folds(main_store.doc_ids, cfg["crossfit"]["n_folds"], cfg["seed"])
    fold_of = dict(zip(docs.tolist(), row_folds[first].tolist(), strict=True))
    raw = np.array([fold_of[d] for d in sweep.doc_ids])
    folds = np.unique(raw, return_inverse=True)[1]
    X = sweep.activations(source).to_numpy(dtype=np.float32)
    Y = sweep.activations(target).to_numpy(dtype=np.float32)
    ridge = AffineTranscoder.from_pretrained(args.run / "transcoder")
    R = residuals(ridge, X, Y)
    placebo = PlaceboRemoval.load(args.run / "stages" / "placebo.npz")
    inputs = {"baseline": Y, "residual": R, "placebo": placebo.transform(Y, R)}
    codes = [
        encode_sparse(SAE.load_from_disk(str(args.run / "saes" / name), device="cpu"), x)
        for name, x in inputs.items()
    ]
    F = sp.hstack(codes, format="csc")
    layers = {h: sweep.activations(h) for h in sweep_hooks(source, target)}
    if args.cross:
        _cross(layers[target], F, folds)
        return
    t = time.perf_counter()
    mat = emergence_matrix(layers, F, folds, min_pos_fit=cfg["crossfit"]["min_pos_fit"],
                           min_pos_score=cfg["crossfit"]["min_pos_score"], path=args.path,
                           path_dtype=args.path_dtype)  # fmt: skip
    wall = time.perf_counter() - t
    print(f"emergence matrix: {int(mat.scorable.sum()):,} scored features x {len(layers)} "
          f"layers, {len(folds):,} tokens: {wall:.1f} s")  # fmt: skip
    stage = args.run / "stages" / "emergence.json"
    if stage.exists():
        saved = json.loads(stage.read_text())["saes"]
        got: dict[str, list[np.ndarray]] = {"r2": [], "auroc": [], "alpha": []}
        start = 0
        for name, f in zip(inputs, codes, strict=True):
            idx = start + np.asarray(saved[name]["scored"], dtype=int)
            for key, ours in (("r2", mat.r2), ("auroc", mat.auroc), ("alpha", mat.alpha)):
                theirs = np.asarray(saved[name][key], dtype=float)
                got[key].append(np.abs(ours[idx] - theirs) / (1.0 if key != "alpha" else theirs))
            start += f.shape[1]
        diff = {key: np.concatenate(v) for key, v in got.items()}
        print(f"against the run's checkpoint: max |R² diff| {np.nanmax(diff['r2']):.2e}, "
              f"max |AUROC diff| {np.nanmax(diff['auroc']):.2e}, (feature, layer) cells "
              f"whose median alpha moved: {int((diff['alpha'] > 1e-6).sum())} of "
              f"{int(np.isfinite(diff['alpha']).sum()):,}")  # fmt: skip


def _cross(X: object, F: sp.csc_matrix, folds: np.ndarray) -> None:
    """X'F of one layer, every block and fold: dense product vs the sparse copies."""
    import torch

    from crosslayer.crossfit import CrossFitRidge
    from crosslayer.crossfit.stats import FoldTargets, load_sorted
    from crosslayer.metrics import colsum

    ft = FoldTargets(F, folds)
    lay = ft.layout
    x = load_sorted(X, lay.order, torch.device("cpu"))  # type: ignore[arg-type]
    sx = [colsum(x[lay.rows(k)]) for k in range(lay.n_folds)]
    dense_fit = CrossFitRidge()
    times = {"dense": 0.0, "sparse": 0.0}
    worst = 0.0
    for _ in range(2):  # the second pass is the one reported (pages faulted in)
        times = {"dense": 0.0, "sparse": 0.0}
        for blk in ft.blocks:
            for k in range(lay.n_folds):
                r = lay.rows(k)
                t = time.perf_counter()
                d = dense_fit._cross(x[r], blk.f[r])
                times["dense"] += time.perf_counter() - t
                if blk.sparse_t is None:
                    continue
                t = time.perf_counter()
                s = blk.cross(x, lay, sx[k], k)
                times["sparse"] += time.perf_counter() - t
                worst = max(worst, float((s - d).abs().max() / d.abs().max().clamp(min=1e-30)))
    sparse_blocks = sum(b.sparse_t is not None for b in ft.blocks)
    print(
        f"X'F of one layer ({x.shape[1]} dims, {F.shape[1]:,} features in {len(ft.blocks)} "
        f"blocks, {sparse_blocks} sparse, {len(folds):,} tokens): dense {times['dense']:.2f} s, "
        f"sparse {times['sparse']:.2f} s; max |sparse - dense| / max |dense| {worst:.1e}"
    )


if __name__ == "__main__":
    main()
