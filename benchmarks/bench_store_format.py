"""Native store format (.npy shards) vs SAELens's cached-activations format (Arrow), measured.

    python benchmarks/bench_store_format.py --tokens 65536 --d 640

The same float32 activations (one hook, ``d`` wide, plus token ids) are written both ways:
ours with :func:`crosslayer.store.format.write_shard` per 16,384-token shard; SAELens's the
way its ``CacheActivationsRunner`` does (``Dataset.from_dict`` per shard, ``save_to_disk``,
consolidated; rows of 128 tokens). Then read: sequential batches of 4,096 tokens, and random
batches of 4,096 tokens (SAELens's rows are sequences, so a random token costs its row).
Page cache is warm for reads (a second pass): the numbers compare formats, not disks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from crosslayer.store.format import write_shard

HOOK = "blocks.8.hook_resid_post"
SHARD, ROW, BATCH = 16384, 128, 4096


def write_native(acts: np.ndarray, tokens: np.ndarray, out: Path) -> None:
    out.mkdir()
    for k, lo in enumerate(range(0, len(acts), SHARD)):
        write_shard(out, k, {"tokens": tokens[lo : lo + SHARD], HOOK: acts[lo : lo + SHARD]})


def write_saelens(acts: np.ndarray, tokens: np.ndarray, out: Path) -> None:
    from datasets import Array2D, Dataset, Features, Sequence, Value
    from sae_lens.cache_activations_runner import CacheActivationsRunner

    d = acts.shape[1]
    features = Features(
        {HOOK: Array2D((ROW, d), "float32"), "token_ids": Sequence(Value("int32"), length=ROW)}
    )
    tmp = out / ".tmp_shards"
    for k, lo in enumerate(range(0, len(acts), SHARD)):
        a, t = acts[lo : lo + SHARD], tokens[lo : lo + SHARD]
        piece = {HOOK: a.reshape(-1, ROW, d), "token_ids": t.reshape(-1, ROW)}
        Dataset.from_dict(piece, features=features).save_to_disk(str(tmp / f"shard_{k:05d}"))
    CacheActivationsRunner._consolidate_shards(tmp, out, copy_files=False)


def native_reader(path: Path):
    parts = [np.load(p / f"{HOOK}.npy", mmap_mode="r") for p in sorted(path.glob("shard_*"))]
    offsets = np.cumsum([0] + [len(p) for p in parts])

    def take(idx: np.ndarray) -> np.ndarray:
        shard = np.searchsorted(offsets, idx, side="right") - 1
        return np.concatenate([parts[k][idx[shard == k] - offsets[k]] for k in np.unique(shard)])

    def sequential():
        for p in parts:
            for lo in range(0, len(p), BATCH):
                yield np.array(p[lo : lo + BATCH])

    return sequential, take


def saelens_reader(path: Path):
    import datasets

    ds = datasets.load_from_disk(str(path))
    ds.set_format("numpy", columns=[HOOK])  # SAELens uses "torch"; same Arrow read underneath

    def take(idx: np.ndarray) -> np.ndarray:
        rows = np.unique(idx // ROW)  # whole sequences must be read
        block = ds[rows][HOOK]
        where = np.searchsorted(rows, idx // ROW)
        return block[where, idx % ROW]

    def sequential():
        per = BATCH // ROW
        for lo in range(0, len(ds), per):
            yield ds[lo : lo + per][HOOK].reshape(-1, ds.features[HOOK].shape[1])

    return sequential, take


def timed(fn, n_tokens: int, repeats: int = 2) -> float:
    """Best tokens/s over ``repeats`` runs (the first also warms the page cache)."""
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = max(best, n_tokens / (time.perf_counter() - t))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=65536)
    ap.add_argument("--d", type=int, default=640)
    ap.add_argument("--random-batches", type=int, default=16)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    acts = rng.standard_normal((args.tokens, args.d), dtype=np.float32)
    tokens = rng.integers(0, 262_144, args.tokens, dtype=np.int32)
    idx = [
        np.sort(rng.choice(args.tokens, BATCH, replace=False)) for _ in range(args.random_batches)
    ]
    n_random = BATCH * args.random_batches

    from datasets.utils import disable_progress_bars

    disable_progress_bars()
    result: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, write, reader in (
            ("native_npy", write_native, native_reader),
            ("saelens_arrow", write_saelens, saelens_reader),
        ):
            out = Path(tmp) / name
            t = time.perf_counter()
            write(acts, tokens, out)
            write_s = args.tokens / (time.perf_counter() - t)
            sequential, take = reader(out)
            for i in idx[:2]:  # both readers return exactly the written rows
                np.testing.assert_array_equal(take(i), acts[i])
            result[name] = {
                "write_tokens_per_s": round(write_s),
                "sequential_read_tokens_per_s": round(
                    timed(lambda s=sequential: sum(len(b) for b in s()), args.tokens)
                ),
                "random_read_tokens_per_s": round(
                    timed(lambda t=take: [t(i) for i in idx], n_random)
                ),
                "disk_mb": round(sum(f.stat().st_size for f in out.rglob("*")) / 1e6, 1),
            }
            shutil.rmtree(out)
    print(json.dumps({"tokens": args.tokens, "d": args.d, **result}, indent=2))


if __name__ == "__main__":
    main()
