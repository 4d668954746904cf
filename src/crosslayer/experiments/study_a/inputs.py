"""Stages 1-2: the model, the hooks, the corpus and its split, and the activation stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from crosslayer.config import RunConfig
from crosslayer.corpus import Corpus, iter_contexts, load_corpus
from crosslayer.errors import CrosslayerError, DataError
from crosslayer.experiments.study_a.hooks import check_order, pick_target, sweep_hooks, sweep_tokens
from crosslayer.experiments.study_a.run import Run
from crosslayer.model import LoadedModel
from crosslayer.rules import check_steps
from crosslayer.store import ActivationStore, StoreSpec, collect_together

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass(frozen=True)
class Hooks:
    """Where study A reads: the early (source) and late (target) hook."""

    source: str
    target: str


@dataclass(frozen=True)
class SplitCounts:
    """Tokens and documents in each split (train / held-out, disjoint by document)."""

    n_train: int
    n_heldout: int
    docs_train: int
    docs_heldout: int


def resolve_hooks(cfg: RunConfig, lm: LoadedModel, sae: SAE[Any] | None) -> Hooks:
    """The (source, target) pair, checked: valid for the model, source shallower, SAE on target.

    Without ``cfg.target`` the target is the pretrained SAE's hook, else the default target
    (:func:`~crosslayer.experiments.study_a.hooks.pick_target`).
    """
    sae_hook = None if sae is None else sae.cfg.metadata.hook_name
    target = pick_target(cfg, lm.n_layers, sae_hook)
    source = cfg.source
    lm.validate_hooks([source, target])
    check_order(source, target)
    if sae is not None and sae_hook != target:
        raise CrosslayerError(
            f"the SAE given with --sae reads {sae_hook}, but the target hook is {target}",
            f"pass --target {sae_hook}, or an SAE trained on {target}",
        )
    return Hooks(source, target)


def plan_split(corpus: Corpus, tokenizer: Any, cfg: RunConfig, n_tokens: int) -> SplitCounts:
    """Tokens and documents per split in the first ``n_tokens`` sample tokens (no model run)."""
    counts = {"train": 0, "heldout": 0}
    docs: dict[str, set[int]] = {"train": set(), "heldout": set()}
    for ctx in iter_contexts(
        corpus,
        tokenizer,
        context_len=cfg.data.context_len,
        heldout_frac=cfg.data.heldout_frac,
        seed=cfg.seed,
    ):
        split = "heldout" if ctx.split else "train"
        take = min(int(ctx.sample.sum()), n_tokens - counts["train"] - counts["heldout"])
        counts[split] += take
        docs[split].add(ctx.doc_id)
        if counts["train"] + counts["heldout"] >= n_tokens:
            break
    return SplitCounts(counts["train"], counts["heldout"], len(docs["train"]), len(docs["heldout"]))


def check_split(split: SplitCounts, cfg: RunConfig, what: str = "") -> None:
    """Both splits must hold ``data.min_split_tokens`` tokens: a clear error before any work."""
    need = cfg.data.min_split_tokens
    for name, n, docs in (
        ("train", split.n_train, split.docs_train),
        ("heldout", split.n_heldout, split.docs_heldout),
    ):
        if n < need:
            more = "sweep.tokens (--set sweep.tokens=N)" if what else "--tokens"
            raise CrosslayerError(
                f"the {name} split{what} holds only {n:,} tokens from {docs} documents "
                f"(need at least {need:,})",
                f"raise {more} or data.heldout_frac, or lower data.max_doc_chars so the "
                "tokens come from more documents",
            )


@dataclass(frozen=True)
class SweepDocs:
    """The depth-sweep store's documents: a part of the main store's, both splits kept."""

    docs: frozenset[int] | None  # None: all of the main store's documents
    extent: int  # sample tokens of the stream up to the last of them (the store's n_tokens)
    split: SplitCounts  # tokens and documents of each split in the sweep store


def sweep_documents(corpus: Corpus, tokenizer: Any, cfg: RunConfig) -> SweepDocs:
    """Which of the main store's documents the depth-sweep store holds (every one of their
    rows, at every ``resid_post`` up to the target, filled by the same forward pass).

    All of them if ``sweep.tokens >= tokens``. Else, per split, the first documents of the
    main store's order whose tokens fit in that split's share of ``sweep.tokens``
    (``data.heldout_frac`` for held-out), at least one document each: whole documents, so
    the sweep's rows are exactly the main store's rows of those documents, and both splits,
    which the first documents of the stream alone may not have.
    """
    budget = sweep_tokens(cfg)
    share = {1: round(budget * cfg.data.heldout_frac)}
    share[0] = budget - share[1]
    docs: dict[int, tuple[int, int]] = {}  # doc id -> (split, tokens in the main store)
    seen, ends = 0, {}  # ends: doc id -> stream tokens up to the end of its rows
    for ctx in iter_contexts(
        corpus,
        tokenizer,
        context_len=cfg.data.context_len,
        heldout_frac=cfg.data.heldout_frac,
        seed=cfg.seed,
    ):
        take = min(int(ctx.sample.sum()), cfg.tokens - seen)
        split, n = docs.get(ctx.doc_id, (ctx.split, 0))
        docs[ctx.doc_id] = (split, n + take)
        seen += take
        ends[ctx.doc_id] = seen
        if seen >= cfg.tokens:
            break
    if budget >= cfg.tokens:
        chosen = list(docs)
    else:
        chosen, used, full = [], {0: 0, 1: 0}, {0: False, 1: False}
        for doc, (split, n) in docs.items():  # dicts keep the stream's order
            if full[split]:
                continue
            if used[split] and used[split] + n > share[split]:
                full[split] = True  # the first documents only: stop this split here
                continue
            chosen.append(doc)
            used[split] += n
    counts = {0: 0, 1: 0}
    n_docs = {0: 0, 1: 0}
    for doc in chosen:
        split, n = docs[doc]
        counts[split] += n
        n_docs[split] += 1
    counted = SplitCounts(counts[0], counts[1], n_docs[0], n_docs[1])
    extent = max((ends[d] for d in chosen), default=0)
    whole = budget >= cfg.tokens
    return SweepDocs(None if whole else frozenset(chosen), extent, counted)


@dataclass
class Corpora:
    """The corpus, checked to give both splits enough tokens, and the sweep's documents."""

    main: Corpus
    sweep: SweepDocs | None  # None: no sweep
    split: SplitCounts  # of the main store's tokens, planned before collecting


def prepare_corpora(cfg: RunConfig, tokenizer: Any) -> Corpora:
    """Load the corpus and check both splits (and the sweep's) before any activation is read."""
    corpus = load_corpus(cfg.corpus, max_doc_chars=cfg.data.max_doc_chars)
    split = plan_split(corpus, tokenizer, cfg, cfg.tokens)
    check_split(split, cfg)
    check_steps(split.n_train * cfg.sae_training.epochs, cfg.sae_training.batch_size)
    sweep = None
    if cfg.sweep.enabled:
        sweep = sweep_documents(corpus, tokenizer, cfg)
        check_split(sweep.split, cfg, " of the sweep")
    return Corpora(corpus, sweep, split)


def collect_stores(
    run: Run, lm: LoadedModel, corpora: Corpora, hooks: Hooks
) -> tuple[ActivationStore, ActivationStore | None]:
    """The main store (source + target) and, if enabled, the depth-sweep store, filled by
    one forward pass (:func:`crosslayer.store.collect_together`).

    The sweep store holds some of the main store's documents (:func:`sweep_documents`) at
    every ``resid_post`` up to the target; its rows are the main store's rows of them.
    A store resumes itself shard by shard, so this stage needs no checkpoint of its own.
    """
    cfg, data = run.cfg, run.cfg.data
    source, target = hooks.source, hooks.target
    specs = [StoreSpec(run.dirs.store, [source, target], cfg.tokens, data.store_dtype)]
    message = f"collecting {cfg.tokens:,} tokens at {source}, {target}"
    if corpora.sweep is not None:
        names, sw = sweep_hooks(source, target), corpora.sweep
        specs.append(StoreSpec(run.dirs.sweep_store, names, sw.extent, cfg.sweep.dtype, sw.docs))
        n = sw.split.n_train + sw.split.n_heldout
        docs = sw.split.docs_train + sw.split.docs_heldout
        message += f"; all {len(names)} sweep hooks on {n:,} of them ({docs} documents)"
    with run.stage("collect", message):
        try:
            stores = collect_together(
                lm,
                specs,
                corpus=corpora.main,
                context_len=data.context_len,
                heldout_frac=data.heldout_frac,
                seed=cfg.seed,
                batch_size=data.batch_size,
                progress=run.progress,
                compile=data.compile_forward,
            )
        except DataError as e:
            half = [k for k, v in (("data.store_dtype", data.store_dtype),
                                   ("sweep.dtype", cfg.sweep.dtype)) if v == "float16"]  # fmt: skip
            if "float16" not in e.problem or not half:
                raise
            sets = " ".join(f"--set {k}=float32" for k in half)
            raise DataError(e.problem, f"set {' and '.join(half)} to float32 ({sets})") from e
    return stores[0], (stores[1] if len(stores) > 1 else None)


@dataclass
class Data:
    """Source and target activations of each split, in memory (float32)."""

    X_train: np.ndarray
    Y_train: np.ndarray
    X_heldout: np.ndarray
    Y_heldout: np.ndarray
    train_idx: np.ndarray  # store rows of each split, for tokens and contexts
    heldout_idx: np.ndarray

    def split_counts(self, store: ActivationStore) -> SplitCounts:
        """Tokens and documents of each split as collected (the plan was approximate)."""
        return SplitCounts(
            n_train=len(self.train_idx),
            n_heldout=len(self.heldout_idx),
            docs_train=len(np.unique(store.doc_ids[self.train_idx])),
            docs_heldout=len(np.unique(store.doc_ids[self.heldout_idx])),
        )


def load_data(store: ActivationStore, hooks: Hooks) -> Data:
    """Both splits of both hooks as float32 arrays."""
    X, Y = store.activations(hooks.source), store.activations(hooks.target)
    return Data(
        X_train=X.to_numpy("train", np.float32),
        Y_train=Y.to_numpy("train", np.float32),
        X_heldout=X.to_numpy("heldout", np.float32),
        Y_heldout=Y.to_numpy("heldout", np.float32),
        train_idx=np.flatnonzero(store.split == 0),
        heldout_idx=np.flatnonzero(store.split == 1),
    )
