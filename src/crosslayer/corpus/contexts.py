"""Cut a corpus into fixed-length token contexts: BOS first, padded, de-duplicated, split.

Each document is tokenised on its own (no special tokens added) and cut into pieces of
``context_len - 1`` tokens; every context is ``[BOS] + piece`` right-padded with the pad
id. Only positions holding a real text token are samples: BOS, pad and any special token
that appears in the text (e.g. a literal ``<eos>``) are masked out. The train / held-out
split is decided per document, so no document contributes to both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from crosslayer.corpus.base import Document
from crosslayer.errors import CrosslayerError

MIN_TOKENS = 8  # a final piece with fewer real tokens is dropped (too little context to learn from)
_BATCH_DOCS = 64  # documents tokenised per call: fast tokenizers parallelise over a batch
_BATCH_CHARS = 2_000_000  # ...but keep each batch's text (and its tokens) small in memory
_FIRST_BATCH_DOCS = 2  # the first batch is small and each next one doubles (up to _BATCH_DOCS),
# so the first contexts come after a few documents' tokenisation, not 64 long ones' (0.23 s
# of builtin:wiki before the first forward pass of an 8k-token collection)


@dataclass
class Context:
    """One model input: ``tokens`` int32 [context_len] and its ``sample`` mask."""

    tokens: np.ndarray  # int32 [context_len], BOS first, right-padded with the pad id
    sample: np.ndarray  # bool [context_len]: True where the position is a text token
    doc_id: int
    split: int  # 0 = train, 1 = held-out


def split_of(doc_id: int, *, heldout_frac: float, seed: int) -> int:
    """1 (held-out) for a seeded-hash fraction ``heldout_frac`` of documents, else 0.

    A cryptographic hash, not Python's ``hash``, so the split is the same on every
    machine and every run.
    """
    digest = hashlib.blake2b(f"{seed}:{doc_id}".encode(), digest_size=8).digest()
    return int(int.from_bytes(digest, "little") / 2**64 < heldout_frac)


def special_mask(tokenizer: Any) -> np.ndarray:
    """bool [vocab]: True for every special token (BOS, EOS, pad, unk, control tokens).

    A lookup table rather than ``np.isin``: Gemma has ~6,000 special ids, and indexing a
    table is one gather per token instead of a sort per context.
    """
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in tokenizer.added_tokens_decoder.items() if t.special)
    mask = np.zeros(max(len(tokenizer), max(ids) + 1), dtype=bool)
    mask[sorted(ids)] = True
    return mask


def _batches(docs: Iterable[Document]) -> Iterator[list[Document]]:
    """Documents in tokenisation batches of 2, 4, 8, ... up to ``_BATCH_DOCS`` documents or
    ``_BATCH_CHARS`` characters. A document's tokens do not depend on its batch."""
    batch: list[Document] = []
    chars, size = 0, _FIRST_BATCH_DOCS
    for doc in docs:
        batch.append(doc)
        chars += len(doc.text)
        if len(batch) >= size or chars >= _BATCH_CHARS:
            yield batch
            batch, chars, size = [], 0, min(2 * size, _BATCH_DOCS)
    if batch:
        yield batch


def iter_contexts(
    corpus: Iterable[Document],
    tokenizer: Any,
    *,
    context_len: int = 128,
    heldout_frac: float = 0.1,
    seed: int = 0,
    dedup: bool = True,
    min_tokens: int = MIN_TOKENS,
) -> Iterator[Context]:
    """Yield the corpus's contexts in a deterministic order (document order, then position).

    ``min_tokens``: a document's last, short piece is kept only if it has at least
    ``min(min_tokens, context_len - 1)`` real tokens. With ``dedup``, a context whose
    tokens equal an earlier one's is dropped (so a repeated document adds nothing).
    """
    if context_len < 2:
        raise CrosslayerError(
            f"context_len must be at least 2 (BOS + one token), got {context_len}",
            "use --context-len 128 or another value >= 2",
        )
    if not 0.0 <= heldout_frac <= 1.0:
        raise CrosslayerError(
            f"heldout_frac must be between 0 and 1, got {heldout_frac}", "use e.g. 0.1"
        )
    bos = tokenizer.bos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if bos is None or pad is None:
        raise CrosslayerError(
            "the tokenizer has no BOS or no pad/EOS token",
            "use a tokenizer with bos_token and pad_token (or eos_token) set",
        )
    is_special = special_mask(tokenizer)
    body = context_len - 1
    keep_min = min(min_tokens, body)
    seen: set[bytes] = set()

    for batch in _batches(corpus):
        encoded = tokenizer(
            [d.text for d in batch],
            add_special_tokens=False,
            return_attention_mask=False,
            verbose=False,  # documents longer than the model's max length are fine: we cut them
        )["input_ids"]
        for doc, ids in zip(batch, encoded, strict=True):
            split = split_of(doc.doc_id, heldout_frac=heldout_frac, seed=seed)
            ids = np.asarray(ids, dtype=np.int32)
            for start in range(0, len(ids), body):
                piece = ids[start : start + body]
                if len(piece) < keep_min:
                    continue
                tokens = np.full(context_len, pad, dtype=np.int32)
                tokens[0] = bos
                tokens[1 : 1 + len(piece)] = piece
                if dedup:
                    key = hashlib.blake2b(tokens.tobytes(), digest_size=16).digest()
                    if key in seen:
                        continue
                    seen.add(key)
                sample = np.zeros(context_len, dtype=bool)  # BOS and padding: never samples
                sample[1 : 1 + len(piece)] = ~is_special[piece]
                yield Context(tokens=tokens, sample=sample, doc_id=doc.doc_id, split=split)
