"""Export one hook of a store to SAELens's cached-activations format.

SAELens (``CacheActivationsRunner`` / ``ActivationsStore(cached_activations_path=...)``)
reads a ``datasets`` directory whose rows are sequences: a column named after the hook of
type ``Array2D(shape=(context_size, d_in))`` and a ``token_ids`` column of
``context_size`` int32. Our store keeps only sample tokens (no BOS or pad), so an exported
row is ``context_size`` consecutive stored tokens; the last ``n % context_size`` tokens do
not fill a row and are left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from crosslayer.errors import CrosslayerError
from crosslayer.fs import atomic_dir
from crosslayer.store.format import SPLITS
from crosslayer.store.reader import ActivationStore, open_store

_ROWS_PER_PIECE = 256  # sequences converted per piece: bounds memory whatever the store size


def export_saelens(
    store: ActivationStore | str | Path,
    hook: str,
    out: str | Path,
    *,
    context_size: int = 128,
    split: str | None = "train",
) -> Path:
    """Write ``hook``'s activations (``split`` tokens only; ``None``: all) to ``out`` so that
    ``datasets.load_from_disk(out)`` and SAELens's cached-activations loader open it.

    The directory is built under a temporary name and renamed into place when complete.
    """
    # local: start-up cost (datasets and sae-lens, only for export)
    from datasets import Array2D, Dataset, Features, Sequence, Value
    from datasets.utils import disable_progress_bars, enable_progress_bars
    from sae_lens.cache_activations_runner import CacheActivationsRunner

    store = store if isinstance(store, ActivationStore) else open_store(store)
    acts = store.activations(hook)
    rows = (
        np.arange(store.n_tokens) if split is None else np.flatnonzero(store.split == SPLITS[split])
    )
    n_seq = len(rows) // context_size
    if n_seq == 0:
        raise CrosslayerError(
            f"store has {len(rows)} {split or 'all'} tokens, fewer than one row of {context_size}",
            "pass a smaller context_size or collect more tokens",
        )
    features = Features(
        {
            hook: Array2D(shape=(context_size, store.d(hook)), dtype=str(acts.dtype)),
            "token_ids": Sequence(Value("int32"), length=context_size),
        }
    )
    out = Path(out)
    disable_progress_bars()  # datasets would show one bar per piece
    try:
        with atomic_dir(out) as tmp:
            pieces = tmp / ".tmp_shards"  # the layout SAELens's own runner consolidates
            for k, first in enumerate(range(0, n_seq, _ROWS_PER_PIECE)):
                n = min(_ROWS_PER_PIECE, n_seq - first)
                idx = rows[first * context_size : (first + n) * context_size]
                piece = {
                    hook: acts[idx].reshape(n, context_size, -1),
                    "token_ids": store.tokens[idx].reshape(n, context_size),
                }
                Dataset.from_dict(piece, features=features).save_to_disk(
                    str(pieces / f"shard_{k:05d}"), num_shards=1
                )
            CacheActivationsRunner._consolidate_shards(pieces, tmp, copy_files=False)
    finally:
        enable_progress_bars()
    return out
