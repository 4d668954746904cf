"""The opt-in bf16 model on CPU against fp32, same run: collection speed and what it changes.

    HF_HUB_OFFLINE=1 python benchmarks/bench_bf16.py --tokens 8000 --repeats 2

Both collect the quick profile's store (Gemma 3 270M, builtin:wiki cut at 6,000 characters,
hook_embed + blocks.12.hook_resid_post, 128-token contexts, held-out 20% of documents,
batch 8, float32 store), interleaved rounds, best of ``--repeats``. Then, on each store: the
largest relative difference of the stored activations from fp32's, and the held-out
explained variance of the ridge transcoder (GCV on train, as ``crosslayer run``). SAE EV and
probe scores need the full quick profile in both dtypes (``crosslayer run --profile quick
--model-dtype bfloat16``).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from crosslayer.corpus import load_corpus
from crosslayer.model import load_model
from crosslayer.store import collect
from crosslayer.transcoder import AffineTranscoder

HOOKS = ["hook_embed", "blocks.12.hook_resid_post"]


def run(lm, corpus, n: int, out: Path) -> tuple[float, object]:
    start = time.perf_counter()
    store = collect(lm, HOOKS, corpus=corpus, n_tokens=n, out=out, heldout_frac=0.2,
                    batch_size=8, progress=False)  # fmt: skip
    return store.n_tokens / (time.perf_counter() - start), store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus("builtin:wiki", max_doc_chars=6000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {dt: load_model("gemma-3-270m", device="cpu", dtype=dt)
                  for dt in ("float32", "bfloat16")}  # fmt: skip
    rates: dict[str, float] = {}
    stores = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dt, lm in models.items():  # warm-up
            run(lm, corpus, 256, Path(tmp) / f"w-{dt}")
        for r in range(args.repeats):
            for dt, lm in models.items():
                rate, stores[dt] = run(lm, corpus, args.tokens, Path(tmp) / f"{dt}-{r}")
                rates[dt] = max(rates.get(dt, 0.0), rate)
        speedup = round(rates["bfloat16"] / rates["float32"], 2)
        out: dict[str, object] = {"tokens": args.tokens, "threads": args.threads,
                                  "tokens_per_s": {k: round(v) for k, v in rates.items()},
                                  "bf16_speedup": speedup}  # fmt: skip
        ref = stores["float32"]
        for dt, store in stores.items():
            X, Y = store.activations(HOOKS[0]), store.activations(HOOKS[1])
            ridge = AffineTranscoder().fit(X.to_numpy("train"), Y.to_numpy("train"))
            ev = ridge.score(X.to_numpy("heldout"), Y.to_numpy("heldout"))
            a, b = ref.activations(HOOKS[1])[:], Y[:]
            out[dt] = {
                "transcoder_heldout_ev": round(float(ev), 4),
                "max_rel_diff_vs_fp32": float(np.abs(a - b).max() / np.abs(a).max()),
                "median_rel_diff_vs_fp32": float(
                    np.median(np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1))
                ),
            }
    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
