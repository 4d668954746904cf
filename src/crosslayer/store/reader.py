"""Reading a store: memory-mapped per-hook arrays, metadata, and streamed batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from crosslayer.errors import CrosslayerError, DataError
from crosslayer.store.format import SPLITS, hook_file, read_manifest
from crosslayer.store.residency import release_memmap

# A bulk read of at least this many bytes from a shard gives the shard's file pages back
# afterwards (see _done_with): the copy is what the caller keeps, so holding the mapped
# pages as well would double the memory of loading a store (to_numpy) for nothing.
_RELEASE_BYTES = 4 << 20


class ShardedArray:
    """A lazy ``[n_tokens, d]`` array over one hook's memory-mapped shard files.

    Supports ``len``, ``.shape``, ``.dtype``, integer, slice, integer-array and boolean-mask
    indexing (each returns an in-memory ``np.ndarray``), and :meth:`to_numpy`.
    """

    def __init__(self, parts: Sequence[np.ndarray], split: np.ndarray | None = None) -> None:
        self.parts = list(parts)
        self._split = split
        # offsets[k] = index of the first row of shard k; offsets[-1] = total rows
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), int(self.parts[0].shape[1]))

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.parts[0].dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= i < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            k = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return np.asarray(self.parts[k][i - self.offsets[k]])
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                return self._range(start, stop)
            return self._take(np.arange(start, stop, step))
        index = np.asarray(key)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise IndexError(f"boolean index of shape {index.shape}, expected ({len(self)},)")
            return self._take(np.flatnonzero(index))
        if not np.issubdtype(index.dtype, np.integer):
            raise IndexError(f"cannot index a ShardedArray with {index.dtype} values")
        index = np.where(index < 0, index + len(self), index)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} rows")
        return self._take(index)

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as one array, reading only the shards they touch."""
        out = np.empty((max(stop - start, 0), self.shape[1]), self.dtype)
        for k, part in enumerate(self.parts):
            lo, hi = max(start, self.offsets[k]), min(stop, self.offsets[k + 1])
            if lo < hi:
                out[lo - start : hi - start] = part[lo - self.offsets[k] : hi - self.offsets[k]]
                _done_with(part, hi - lo)
        return out

    def _take(self, index: np.ndarray) -> np.ndarray:
        """Rows at arbitrary indices, in the order given; reads each shard's rows sorted."""
        flat = index.reshape(-1)
        out = np.empty((flat.size, self.shape[1]), self.dtype)
        shard = np.searchsorted(self.offsets, flat, side="right") - 1
        for k in np.unique(shard):
            where = np.flatnonzero(shard == k)
            local = flat[where] - self.offsets[k]
            order = np.argsort(local, kind="stable")  # sequential reads from the memmap
            out[where[order]] = self.parts[k][local[order]]
            _done_with(self.parts[k], int(local.max() - local.min()) + 1)  # rows spanned
        return out.reshape((*index.shape, self.shape[1]))

    def to_numpy(self, split: str | None = None, dtype: npt.DTypeLike | None = None) -> np.ndarray:
        """Load the rows (all, or only ``"train"`` / ``"heldout"`` ones) into memory."""
        if split is None:
            out = self._range(0, len(self))
        else:
            if self._split is None:
                raise ValueError("this array has no split labels")
            out = self._take(np.flatnonzero(self._split == _split_code(split)))
        return out if dtype is None else out.astype(dtype, copy=False)


def _done_with(part: np.ndarray, rows: int) -> None:
    """After a read spanning ``rows`` rows of a memory-mapped shard, unmap its resident
    pages if the span was large (small, repeated lookups keep them: refaulting costs more)."""
    if rows * part.itemsize * (part.shape[1] if part.ndim > 1 else 1) >= _RELEASE_BYTES:
        release_memmap(part)


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise CrosslayerError(f"unknown split {split!r}", "use 'train', 'heldout' or None")
    return SPLITS[split]


class ActivationStore:
    """A finished activation store, opened read-only (see :func:`open_store`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest: dict[str, Any] = read_manifest(self.path)
        if not self.manifest.get("complete"):
            done = len(self.manifest["shards"])
            raise DataError(
                f"store {self.path} is incomplete ({done} of {self.manifest['n_shards']} "
                "shards written)",
                "run the same `crosslayer collect` command again to finish it",
            )
        self.hooks: list[str] = list(self.manifest["hooks"])
        self.n_tokens: int = int(self.manifest["n_tokens"])
        self._shards = [self.path / s["name"] for s in self.manifest["shards"]]

    def __repr__(self) -> str:
        return f"ActivationStore({str(self.path)!r}, hooks={self.hooks}, n_tokens={self.n_tokens})"

    def __len__(self) -> int:
        return self.n_tokens

    def d(self, hook: str) -> int:
        """Width of ``hook``'s activations."""
        return int(self.manifest["dims"][self._check(hook)])

    def _check(self, hook: str) -> str:
        if hook not in self.hooks:
            raise CrosslayerError(
                f"hook {hook!r} is not in store {self.path}",
                f"use one of: {', '.join(self.hooks)}",
            )
        return hook

    def _load(self, shard: Path, name: str, mmap: bool) -> np.ndarray:
        try:
            return np.load(shard / name, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(
                f"cannot read {shard / name}: {e}", f"run `crosslayer verify {self.path}`"
            ) from e

    def _meta(self, name: str) -> np.ndarray:
        return np.concatenate([self._load(s, f"{name}.npy", mmap=False) for s in self._shards])

    def activations(self, hook: str) -> ShardedArray:
        """``hook``'s activations as a lazy, memory-mapped ``[n_tokens, d]`` array."""
        parts = [self._load(s, hook_file(self._check(hook)), mmap=True) for s in self._shards]
        return ShardedArray(parts, split=self.split)

    # Per-token metadata: small (a few bytes per token), so loaded into memory once.
    @cached_property
    def tokens(self) -> np.ndarray:
        return self._meta("tokens")

    @cached_property
    def doc_ids(self) -> np.ndarray:
        return self._meta("doc_ids")

    @cached_property
    def positions(self) -> np.ndarray:
        return self._meta("positions")

    @cached_property
    def context_ids(self) -> np.ndarray:
        return self._meta("context_ids")

    @cached_property
    def split(self) -> np.ndarray:
        return self._meta("split")

    def iter_batches(
        self,
        hooks: Sequence[str] | str,
        *,
        split: str | None = "train",
        batch_size: int = 4096,
        dtype: npt.DTypeLike = np.float32,
        shards: Sequence[int] | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Stream ``{hook: [batch, d]}`` batches in store order, one shard in memory at a time.

        ``split`` keeps only ``"train"`` or ``"heldout"`` tokens (``None``: all). Every batch
        has ``batch_size`` rows except possibly the last. ``shards`` reads only those shard
        indices (one data-parallel rank's share, say; default: all).
        """
        hooks = [self._check(h) for h in ([hooks] if isinstance(hooks, str) else hooks)]
        if batch_size < 1:
            raise CrosslayerError(f"batch_size must be >= 1, got {batch_size}", "pass a size")
        code = None if split is None else _split_code(split)
        paths = self._shards if shards is None else [self._shards[k] for k in shards]
        pending: list[dict[str, np.ndarray]] = []
        n_pending = 0
        for shard in paths:
            arrays = {h: self._load(shard, hook_file(h), mmap=True) for h in hooks}
            rows: np.ndarray | None = None
            if code is not None:
                rows = np.flatnonzero(self._load(shard, "split.npy", mmap=False) == code)
            n = len(next(iter(arrays.values()))) if rows is None else len(rows)
            start = 0
            while start < n:
                take = min(batch_size - n_pending, n - start)
                sel = slice(start, start + take) if rows is None else rows[start : start + take]
                # np.array copies: batches must not be read-only views of the memmap
                pending.append({h: np.array(a[sel], dtype=dtype) for h, a in arrays.items()})
                n_pending += take
                start += take
                if n_pending == batch_size:
                    yield _concat(pending)
                    pending, n_pending = [], 0
            for a in arrays.values():  # batches are copies: the shard's pages can go
                release_memmap(a)
        if pending:
            yield _concat(pending)


def _concat(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(pieces) == 1:
        return pieces[0]
    return {h: np.concatenate([p[h] for p in pieces]) for h in pieces[0]}


def open_store(path: str | Path) -> ActivationStore:
    """Open a finished store written by :func:`crosslayer.store.collect`."""
    return ActivationStore(path)
