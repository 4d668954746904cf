"""Activation batches for SAE training and evaluation, from a store or from any tensors.

sae-lens's ``SAETrainer`` takes a *data provider*: an iterator of ``[batch, d]`` tensors with
exactly ``train_batch_size_samples`` rows (its sparsity statistics assume it). Its own
``ActivationsStore`` runs a language model; ours come from an :class:`ActivationStore` or from
whatever tensors the caller has (study A trains on ``late - transcoder(early)``, which no
hook produces), so this module adapts both to that contract, with a seeded shuffle buffer
(activations in a store are in context order, and neighbouring tokens are correlated).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crosslayer.errors import CrosslayerError, DataError

Chunks = Callable[[], Iterator[torch.Tensor]]


@dataclass
class Source:
    """Re-iterable activations: ``chunks()`` starts a fresh pass over ``[n, d]`` float tensors."""

    chunks: Chunks
    d: int
    n_tokens: int
    identity: dict[str, Any]


def as_source(data: Any, hook: str | None = None, *, split: str = "train") -> Source:
    """Wrap an ActivationStore (+ hook), a tensor/array ``[n, d]``, a list of them, a callable
    returning a fresh iterator, or a one-shot iterator (read once into memory)."""
    if hasattr(data, "iter_batches") and hasattr(data, "manifest"):
        return _store_source(data, hook, split)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        return _tensor_source(_as_2d(data, "data"), {"kind": "tensor"})
    if callable(data):
        first = _as_2d(next(iter(data()), None), "the first batch")
        n = sum(int(_as_2d(c, "a batch").shape[0]) for c in data())
        return Source(
            lambda: (_as_2d(c, "a batch") for c in data()), first.shape[1], n, {"kind": "callable"}
        )
    if isinstance(data, Iterable):
        chunks = [_as_2d(c, "a batch") for c in data]
        if not chunks:
            raise DataError(
                "no activations given (the iterable was empty)",
                "pass at least one [batch, d] tensor",
            )
        if len({c.shape[1] for c in chunks}) > 1:
            raise DataError(
                f"batches have different widths {sorted({c.shape[1] for c in chunks})}",
                "every batch must be [batch, d] with the same d",
            )
        return _tensor_source(torch.cat(chunks), {"kind": "tensors"})
    raise CrosslayerError(
        f"cannot train on a {type(data).__name__}",
        "pass an ActivationStore with a hook, a [n, d] tensor, or [batch, d] tensors",
    )


def _as_2d(x: Any, what: str) -> torch.Tensor:
    if x is None:
        raise DataError(
            f"{what} is missing (no activations)", "pass at least one [batch, d] tensor"
        )
    t = torch.as_tensor(x)
    if t.ndim != 2 or not t.is_floating_point():
        raise DataError(
            f"{what} has shape {tuple(t.shape)} and dtype {t.dtype}",
            "pass float activations shaped [batch, d]",
        )
    return t.float()


def _tensor_source(x: torch.Tensor, identity: dict[str, Any]) -> Source:
    if not torch.isfinite(x).all():
        raise DataError(
            "the activations contain NaN or infinite values",
            "remove or fix those rows before training",
        )
    return Source(
        lambda: iter([x]),
        int(x.shape[1]),
        int(x.shape[0]),
        {**identity, "n": int(x.shape[0]), "d": int(x.shape[1])},
    )


def _store_source(store: Any, hook: str | None, split: str) -> Source:
    if hook is None:
        raise CrosslayerError("training from a store needs a hook name", "pass --hook NAME")
    if hook not in store.hooks:
        raise CrosslayerError(
            f"hook {hook!r} is not in the store {store.path}",
            f"use one of: {', '.join(store.hooks)}",
        )
    flag = {"train": 0, "heldout": 1}[split]
    n = int((np.asarray(store.split) == flag).sum())
    if n == 0:
        raise DataError(
            f"the store {store.path} has no {split} tokens",
            "collect more tokens or change heldout_frac",
        )

    def chunks() -> Iterator[torch.Tensor]:
        for batch in store.iter_batches([hook], split=split, batch_size=16384, dtype=np.float32):
            yield torch.from_numpy(np.ascontiguousarray(batch[hook]))

    manifest = store.manifest
    identity = {
        "kind": "store",
        "path": str(store.path),
        "hook": hook,
        "split": split,
        "config_hash": manifest.get("config_hash"),
        "model": manifest.get("model"),
    }
    return Source(chunks, int(store.d(hook)), n, identity)


def batches(
    source: Source, batch_size: int, *, seed: int, buffer_tokens: int
) -> Iterator[torch.Tensor]:
    """Endless, seeded stream of ``[batch_size, d]`` batches, epoch after epoch.

    Rows are gathered into a buffer of ``buffer_tokens`` and served in a random order; the
    same seed gives the same stream, which is what makes resuming after a crash exact.
    """
    if source.n_tokens < batch_size:
        raise DataError(
            f"only {source.n_tokens} tokens for a batch size of {batch_size}",
            "lower batch_size or give more tokens",
        )
    gen = torch.Generator().manual_seed(seed)
    carry = torch.empty(0, source.d)
    while True:
        buf = [carry]
        size = carry.shape[0]
        for chunk in source.chunks():
            buf.append(chunk)
            size += chunk.shape[0]
            if size >= buffer_tokens:
                carry = yield from _serve(torch.cat(buf), batch_size, gen)
                buf, size = [carry], carry.shape[0]
        carry = yield from _serve(torch.cat(buf), batch_size, gen)


def _serve(
    buf: torch.Tensor, batch_size: int, gen: torch.Generator
) -> Generator[torch.Tensor, None, torch.Tensor]:
    buf = buf[torch.randperm(buf.shape[0], generator=gen)]
    full = buf.shape[0] // batch_size * batch_size
    for i in range(0, full, batch_size):
        yield buf[i : i + batch_size]
    return buf[full:]  # the remainder starts the next buffer
