"""iter_contexts: BOS, chunking, padding, sample mask, dedup and the document split."""

from __future__ import annotations

import numpy as np
import pytest

from crosslayer.corpus import Document, iter_contexts, split_of
from crosslayer.errors import CrosslayerError
from crosslayer.model.tiny import tiny_tokenizer

PAD, EOS, BOS, UNK = 0, 1, 2, 3
TEXT = (
    "The council said on Tuesday that the new bridge over the river would open next spring, "
    "two years later than planned, after engineers found cracks in the northern pier."
)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_chunks_reconstruct_the_document(tok):
    ref = ids_of(tok, TEXT * 3)
    ctxs = list(iter_contexts([Document(0, TEXT * 3)], tok, context_len=16, min_tokens=1))
    body = 15
    assert len(ctxs) == -(-len(ref) // body)  # ceil: every token lands in one context
    for c in ctxs:
        assert c.tokens.dtype == np.int32 and c.tokens.shape == (16,)
        assert c.sample.dtype == np.bool_ and c.sample.shape == (16,)
        assert c.tokens[0] == BOS
    n_last = len(ref) - body * (len(ctxs) - 1)
    assert np.all(ctxs[-1].tokens[1 + n_last :] == PAD)  # right-padded
    rebuilt = np.concatenate([c.tokens[1:] for c in ctxs])[: len(ref)]
    np.testing.assert_array_equal(rebuilt, ref)


def test_sample_mask_excludes_bos_pad_and_special_tokens_in_text(tok):
    text = "The minister said <eos> that the talks <unk> had failed."
    ref = ids_of(tok, text)
    assert EOS in ref and UNK in ref  # the tokenizer keeps literal special tokens as one id
    (c,) = iter_contexts([Document(0, text)], tok, context_len=len(ref) + 5, min_tokens=1)
    expected = np.zeros(len(ref) + 5, dtype=bool)
    expected[1 : 1 + len(ref)] = ~np.isin(ref, [PAD, EOS, BOS, UNK])
    np.testing.assert_array_equal(c.sample, expected)
    assert c.sample.sum() == len(ref) - 2


def test_short_final_piece_is_dropped_below_min_tokens(tok):
    ref = ids_of(tok, TEXT)
    # A context length whose last piece keeps 1..7 tokens: below the default minimum of 8.
    context_len = next(n for n in range(10, 60) if 1 <= len(ref) % (n - 1) < 8)
    full = len(ref) // (context_len - 1)
    kept = list(iter_contexts([Document(0, TEXT)], tok, context_len=context_len))
    assert len(kept) == full
    assert all(c.sample[1:].all() for c in kept)  # every kept piece is full
    with_tail = list(iter_contexts([Document(0, TEXT)], tok, context_len=context_len, min_tokens=1))
    assert len(with_tail) == full + 1


def test_document_shorter_than_minimum_gives_no_context(tok):
    assert list(iter_contexts([Document(0, "Hi there.")], tok)) == []


def test_exact_duplicate_document_is_dropped(tok):
    other = "Share prices fell sharply in Sydney after the bank raised interest rates again."
    docs = [Document(0, TEXT), Document(1, other), Document(2, TEXT)]
    kept = list(iter_contexts(docs, tok, context_len=16))
    assert {c.doc_id for c in kept} == {0, 1}
    every = list(iter_contexts(docs, tok, context_len=16, dedup=False))
    dup = [c for c in every if c.doc_id == 2]
    first = [c for c in every if c.doc_id == 0]
    assert len(dup) == len(first) > 0
    for a, b in zip(first, dup, strict=True):
        np.testing.assert_array_equal(a.tokens, b.tokens)


def _many_docs(n: int) -> list[Document]:
    return [Document(i, f"Report number {i}: {TEXT}") for i in range(n)]


def test_split_is_by_document_deterministic_and_seeded(tok):
    docs = _many_docs(200)
    run = [(c.doc_id, c.split) for c in iter_contexts(docs, tok, context_len=16, seed=3)]
    again = [(c.doc_id, c.split) for c in iter_contexts(docs, tok, context_len=16, seed=3)]
    assert run == again
    train = {d for d, s in run if s == 0}
    heldout = {d for d, s in run if s == 1}
    assert train and heldout and not train & heldout
    assert all(s == split_of(d, heldout_frac=0.1, seed=3) for d, s in run)
    other = {c.doc_id for c in iter_contexts(docs, tok, context_len=16, seed=4) if c.split}
    assert other != heldout


def test_heldout_fraction_near_target():
    for frac in (0.1, 0.3):
        got = np.mean([split_of(i, heldout_frac=frac, seed=0) for i in range(20_000)])
        assert abs(got - frac) < 0.01  # binomial sd ≈ 0.003
    assert {split_of(i, heldout_frac=0.0, seed=0) for i in range(500)} == {0}
    assert {split_of(i, heldout_frac=1.0, seed=0) for i in range(500)} == {1}


def test_order_is_document_then_position(tok):
    docs = _many_docs(20)
    ids = [c.doc_id for c in iter_contexts(docs, tok, context_len=16)]
    assert ids == sorted(ids) and set(ids) == set(range(20))


@pytest.mark.parametrize("context_len", [1, 0, -5])
def test_context_len_below_two_is_an_error(tok, context_len):
    with pytest.raises(CrosslayerError, match="context_len must be at least 2"):
        next(iter_contexts([Document(0, TEXT)], tok, context_len=context_len))


def test_heldout_frac_out_of_range_is_an_error(tok):
    with pytest.raises(CrosslayerError, match="heldout_frac"):
        next(iter_contexts([Document(0, TEXT)], tok, heldout_frac=1.5))


def test_contexts_do_not_depend_on_the_tokenisation_batches(tok, monkeypatch):
    """Batches grow 2, 4, 8, ...: the contexts equal one-document-at-a-time tokenisation."""
    import crosslayer.corpus.contexts as contexts

    docs = [Document(i, TEXT[: 40 + 9 * i] * (1 + i % 3)) for i in range(40)]
    sizes = [len(b) for b in contexts._batches(docs)]
    assert sizes[:5] == [2, 4, 8, 16, 10] and sum(sizes) == 40
    got = list(iter_contexts(docs, tok, context_len=16))
    monkeypatch.setattr(contexts, "_FIRST_BATCH_DOCS", 1)
    monkeypatch.setattr(contexts, "_BATCH_DOCS", 1)
    assert [len(b) for b in contexts._batches(docs)] == [1] * 40
    one_by_one = list(iter_contexts(docs, tok, context_len=16))
    assert len(got) == len(one_by_one) > 40
    for a, b in zip(got, one_by_one, strict=True):
        assert (a.doc_id, a.split) == (b.doc_id, b.split)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.sample, b.sample)
