"""One forward pass fills the main store and the depth-sweep store over the same documents.

The sweep store is the main store's first whole documents at more hooks: its rows must be
the main store's rows (same documents, contexts, tokens, and for the hooks both hold the
same values, bit for bit), its other hooks must equal an independent forward pass, and the
pass must run each batch once (counted with a forward hook on the model).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crosslayer.config import build_config
from crosslayer.corpus import iter_contexts, load_corpus
from crosslayer.experiments.study_a import inputs
from crosslayer.experiments.study_a.hooks import sweep_hooks
from crosslayer.experiments.study_a.run import open_run
from crosslayer.model import tiny_model
from crosslayer.store import StoreSpec, collect, collect_together
from tests.cli_helpers import store_files

MAIN = ["hook_embed", "blocks.2.hook_resid_post"]
SWEEP = sweep_hooks(*MAIN)  # embed, resid_post 0, 1, 2
N, N_SWEEP, SHARD = 3000, 1300, 700  # the sweep ends inside shard 1 of 5
SETTINGS: dict[str, Any] = dict(
    corpus="builtin:news", context_len=32, heldout_frac=0.3, seed=1, batch_size=3,
    shard_tokens=SHARD, progress=False,
)  # fmt: skip
META = ("tokens", "doc_ids", "positions", "context_ids", "split")


@pytest.fixture(scope="module")
def lm() -> Any:
    return tiny_model()


class Forwards:
    """Counts calls of the model's forward (every batch of a collection is one call)."""

    def __init__(self, lm: Any) -> None:
        self.n = 0
        self.handle = lm.model.register_forward_pre_hook(self._count)

    def _count(self, *_: Any) -> None:
        self.n += 1

    def __enter__(self) -> Forwards:
        return self

    def __exit__(self, *_: Any) -> None:
        self.handle.remove()


@pytest.fixture(scope="module")
def pair(lm: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("one-pass")
    with Forwards(lm) as both:
        main, sweep = collect_together(
            lm,
            [StoreSpec(root / "main", MAIN, N), StoreSpec(root / "sweep", SWEEP, N_SWEEP)],
            **SETTINGS,
        )
    with Forwards(lm) as alone:
        collect(lm, MAIN, n_tokens=N, out=root / "alone", **SETTINGS)
    return {"root": root, "main": main, "sweep": sweep, "calls": both.n, "alone": alone.n}


def test_sweep_rows_are_the_main_stores_first_rows_bit_for_bit(pair: dict[str, Any]) -> None:
    main, sweep = pair["main"], pair["sweep"]
    assert (main.n_tokens, sweep.n_tokens) == (N, N_SWEEP)
    for name in META:
        np.testing.assert_array_equal(getattr(sweep, name), getattr(main, name)[:N_SWEEP])
    for hook in MAIN:
        np.testing.assert_array_equal(sweep.activations(hook)[:], main.activations(hook)[:N_SWEEP])


def test_the_two_stores_take_one_pass(pair: dict[str, Any]) -> None:
    # as many forward calls as collecting the main store alone (5 shards of 700 tokens,
    # batches of 3 contexts of <= 31 tokens: about 8 calls a shard); two passes would add
    # the sweep's own 2 shards' worth
    assert pair["calls"] == pair["alone"] > 5 * 7


def test_the_sweep_hooks_equal_an_independent_forward(lm: Any, pair: dict[str, Any]) -> None:
    """Every sweep hook against one context at a time, attention mask and padding kept."""
    sweep = pair["sweep"]
    want: dict[str, list[np.ndarray]] = {h: [] for h in SWEEP}
    n = 0
    contexts = iter_contexts(load_corpus("builtin:news"), lm.tokenizer, context_len=32,
                             heldout_frac=0.3, seed=1)  # fmt: skip
    for ctx in contexts:
        ids = torch.from_numpy(ctx.tokens[None])
        mask = torch.from_numpy(ctx.tokens != lm.tokenizer.pad_token_id)[None].long()
        out = lm.run_with_hooks(ids, mask, hooks=SWEEP)
        pos = np.flatnonzero(ctx.sample)[: N_SWEEP - n]
        for h in SWEEP:
            want[h].append(out[h][0].numpy()[pos])
        n += len(pos)
        if n == N_SWEEP:
            break
    for h in SWEEP:
        ref = np.concatenate(want[h])
        got = sweep.activations(h)[:]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max(), err_msg=h)


def test_a_shard_missing_from_either_store_is_redone_alone(lm: Any, pair: dict[str, Any]):
    root = pair["root"]
    before = {name: store_files(root / name) for name in ("main", "sweep")}
    shutil.rmtree(root / "sweep" / "shard_00001")  # the sweep's last (trimmed) shard
    shutil.rmtree(root / "main" / "shard_00003")
    with Forwards(lm) as redo:
        collect_together(
            lm,
            [StoreSpec(root / "main", MAIN, N), StoreSpec(root / "sweep", SWEEP, N_SWEEP)],
            **SETTINGS,
        )
    assert 0 < redo.n < pair["calls"] / 2  # two shards of five
    for name in ("main", "sweep"):
        assert store_files(root / name) == before[name], name


# --------------------------------------------------------------------------------------------
# the run: the sweep's extent, and its collect stage


def _doc_totals(cfg: Any, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Document ids in stream order and their sample tokens, tallied directly."""
    docs: list[int] = []
    totals: list[int] = []
    corpus = load_corpus(cfg.corpus, max_doc_chars=cfg.data.max_doc_chars)
    for ctx in iter_contexts(corpus, tokenizer, context_len=cfg.data.context_len,
                             heldout_frac=cfg.data.heldout_frac, seed=cfg.seed):  # fmt: skip
        if not docs or docs[-1] != ctx.doc_id:
            docs.append(ctx.doc_id)
            totals.append(0)
        totals[-1] += int(ctx.sample.sum())
    return docs, totals


def _config(out: Path | None = None, **over: Any) -> Any:
    base = {
        "corpus": "builtin:news", "tokens": 4000, "device": "cpu",
        "data": {"max_doc_chars": 1500, "heldout_frac": 0.25, "min_split_tokens": 200},
        "sweep": {"tokens": 2500},
    }  # fmt: skip
    if out is not None:
        base["out"] = str(out)
    return build_config("quick", overrides={**base, **over})


def _doc_table(cfg: Any, tokenizer: Any) -> list[tuple[int, int, int]]:
    """(doc id, split, tokens in the main store) in stream order, tallied directly."""
    docs, totals = _doc_totals(cfg, tokenizer)
    split = {}
    corpus = load_corpus(cfg.corpus, max_doc_chars=cfg.data.max_doc_chars)
    for ctx in iter_contexts(corpus, tokenizer, context_len=cfg.data.context_len,
                             heldout_frac=cfg.data.heldout_frac, seed=cfg.seed):  # fmt: skip
        split[ctx.doc_id] = ctx.split
    ends = np.minimum(np.cumsum(totals), cfg.tokens)
    inside = np.diff(np.concatenate([[0], ends]))  # the main store cuts its last document
    return [(d, split[d], int(n)) for d, n in zip(docs, inside, strict=True) if n > 0]


@pytest.mark.parametrize("budget", [2500, 700, 100, 4000, 10_000])
def test_the_sweep_takes_each_splits_first_documents_within_its_share(lm: Any, budget: int):
    cfg = _config(sweep={"tokens": budget})
    table = _doc_table(cfg, lm.tokenizer)
    corpus = load_corpus(cfg.corpus, max_doc_chars=cfg.data.max_doc_chars)
    got = inputs.sweep_documents(corpus, lm.tokenizer, cfg)
    if budget >= cfg.tokens:
        assert got.docs is None and got.extent == cfg.tokens  # all of the main store
        assert got.split.n_train + got.split.n_heldout == cfg.tokens
        return
    assert got.docs is not None
    for split, share in ((1, round(budget * 0.25)), (0, budget - round(budget * 0.25))):
        mine = [(d, n) for d, s, n in table if s == split]
        taken = [d for d, _ in mine if d in got.docs]
        k = len(taken)
        assert taken == [d for d, _ in mine[:k]]  # a prefix of the split's documents
        used = sum(n for _, n in mine[:k])
        assert k >= 1 and (k == 1 or used <= share)  # fits, or the one document
        assert k == len(mine) or used + mine[k][1] > share  # the next one would not fit
        assert (got.split.n_heldout if split else got.split.n_train) == used
    stream = [d for d, _, _ in table]
    last = max(stream.index(d) for d in got.docs)
    assert got.extent == sum(n for _, _, n in table[: last + 1])


def test_the_runs_collect_stage_fills_both_stores_in_one_pass(lm: Any, tmp_path: Path) -> None:
    cfg = _config(tmp_path / "run")
    run = open_run(cfg, progress=False)
    corpora = inputs.prepare_corpora(cfg, lm.tokenizer)
    hooks = inputs.Hooks("hook_embed", "blocks.2.hook_resid_post")
    with Forwards(lm) as both:
        store, sweep = inputs.collect_stores(run, lm, corpora, hooks)
    assert sweep is not None and set(run.timings) == {"collect"}
    with Forwards(lm) as alone:
        collect(lm, MAIN, corpus=corpora.main, n_tokens=cfg.tokens, out=tmp_path / "alone",
                context_len=cfg.data.context_len, heldout_frac=cfg.data.heldout_frac,
                seed=cfg.seed, batch_size=cfg.data.batch_size, progress=False)  # fmt: skip
    assert both.n == alone.n
    assert corpora.sweep is not None and corpora.sweep.docs is not None
    chosen = np.isin(store.doc_ids, sorted(corpora.sweep.docs))
    assert sweep.hooks == sweep_hooks(*MAIN) and sweep.n_tokens == chosen.sum()
    assert (sweep.split == 1).sum() == corpora.sweep.split.n_heldout > 0  # both splits
    for name in META:
        np.testing.assert_array_equal(getattr(sweep, name), getattr(store, name)[chosen])
    for hook in MAIN:
        np.testing.assert_array_equal(sweep.activations(hook)[:], store.activations(hook)[chosen])
