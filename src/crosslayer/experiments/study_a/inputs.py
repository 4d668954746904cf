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
            raise CrosslayerError(
                f"the {name} split{what} holds only {n:,} tokens from {docs} documents "
                f"(need at least {need:,})",
                "raise --tokens or data.heldout_frac, or lower data.max_doc_chars so the tokens "
                "come from more documents",
            )


def sweep_extent(corpus: Corpus, tokenizer: Any, cfg: RunConfig) -> int:
    """Tokens of the depth-sweep store: the main store's first whole documents.

    Both stores are filled by one pass over the same context stream, and the sweep keeps
    every ``resid_post``, so it holds fewer tokens: all of the main store's if
    ``sweep.tokens >= tokens``, else its first documents whose tokens fit in ``sweep.tokens``
    (at least the first document). Whole documents, so the sweep's rows are exactly the
    main store's rows of those documents, and no document is cut between the two.
    """
    n = sweep_tokens(cfg)
    if n >= cfg.tokens:
        return cfg.tokens
    seen, ends, doc = 0, 0, None  # ends: sample tokens up to the last finished document
    for ctx in iter_contexts(
        corpus,
        tokenizer,
        context_len=cfg.data.context_len,
        heldout_frac=cfg.data.heldout_frac,
        seed=cfg.seed,
    ):
        if ctx.doc_id != doc:  # a new document: the previous one is whole
            if seen > n:
                break
            ends, doc = seen, ctx.doc_id
        seen += int(ctx.sample.sum())
        if seen >= cfg.tokens:  # past the main store: its last document is cut there
            break
    whole = seen if seen <= n else ends
    return min(cfg.tokens, whole if whole > 0 else seen)


@dataclass
class Corpora:
    """The corpus, checked to give both splits enough tokens, and the sweep's extent."""

    main: Corpus
    n_sweep: int | None  # tokens of the sweep store (sweep_extent); None: no sweep
    split: SplitCounts  # of the main store's tokens, planned before collecting


def prepare_corpora(cfg: RunConfig, tokenizer: Any) -> Corpora:
    """Load the corpus and check both splits (and the sweep's) before any activation is read."""
    corpus = load_corpus(cfg.corpus, max_doc_chars=cfg.data.max_doc_chars)
    split = plan_split(corpus, tokenizer, cfg, cfg.tokens)
    check_split(split, cfg)
    check_steps(split.n_train * cfg.sae_training.epochs, cfg.sae_training.batch_size)
    n_sweep = None
    if cfg.sweep.enabled:
        n_sweep = sweep_extent(corpus, tokenizer, cfg)
        check_split(plan_split(corpus, tokenizer, cfg, n_sweep), cfg, " of the sweep")
    return Corpora(corpus, n_sweep, split)


def collect_stores(
    run: Run, lm: LoadedModel, corpora: Corpora, hooks: Hooks
) -> tuple[ActivationStore, ActivationStore | None]:
    """The main store (source + target) and, if enabled, the depth-sweep store, filled by
    one forward pass (:func:`crosslayer.store.collect_together`).

    The sweep store holds the main store's first documents (:func:`sweep_extent`) at every
    ``resid_post`` up to the target; its source and target rows are the main store's rows.
    A store resumes itself shard by shard, so this stage needs no checkpoint of its own.
    """
    cfg, data = run.cfg, run.cfg.data
    source, target = hooks.source, hooks.target
    specs = [StoreSpec(run.dirs.store, [source, target], cfg.tokens, data.store_dtype)]
    message = f"collecting {cfg.tokens:,} tokens at {source}, {target}"
    if corpora.n_sweep is not None:
        names = sweep_hooks(source, target)
        specs.append(StoreSpec(run.dirs.sweep_store, names, corpora.n_sweep, cfg.sweep.dtype))
        message += f" (and all {len(names)} sweep hooks on the first {corpora.n_sweep:,})"
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
