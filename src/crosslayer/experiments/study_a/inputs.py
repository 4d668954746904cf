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
from crosslayer.store import ActivationStore, collect

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


def sweep_corpus(spec: str, cfg: RunConfig) -> Corpus:
    """The depth sweep's corpus: the same documents, each cut shorter in proportion.

    The sweep stores every layer, so it takes fewer tokens (``sweep.tokens``); cutting each
    document to ``max_doc_chars * sweep.tokens / tokens`` characters spreads them over the
    same documents (and the same held-out documents) as the main store.
    """
    n = sweep_tokens(cfg)
    chars = cfg.data.max_doc_chars
    return load_corpus(
        spec, max_doc_chars=None if chars is None else max(200, chars * n // cfg.tokens)
    )


@dataclass
class Corpora:
    """The main corpus, checked to give both splits enough tokens, and the sweep's."""

    main: Corpus
    sweep: Corpus | None
    split: SplitCounts  # of the main store's tokens, planned before collecting


def prepare_corpora(cfg: RunConfig, tokenizer: Any) -> Corpora:
    """Load the corpus (and the sweep's) and check both splits before any activation is read."""
    corpus = load_corpus(cfg.corpus, max_doc_chars=cfg.data.max_doc_chars)
    split = plan_split(corpus, tokenizer, cfg, cfg.tokens)
    check_split(split, cfg)
    check_steps(split.n_train * cfg.sae_training.epochs, cfg.sae_training.batch_size)
    sweep = None
    if cfg.sweep.enabled:
        sweep = sweep_corpus(cfg.corpus, cfg)
        check_split(plan_split(sweep, tokenizer, cfg, sweep_tokens(cfg)), cfg, " of the sweep")
    return Corpora(corpus, sweep, split)


def collect_stores(
    run: Run, lm: LoadedModel, corpora: Corpora, hooks: Hooks
) -> tuple[ActivationStore, ActivationStore | None]:
    """The main store (source + target) and, if enabled, the depth-sweep store.

    A store resumes itself shard by shard (:func:`crosslayer.store.collect`), so these two
    stages need no checkpoint of their own.
    """
    cfg, data = run.cfg, run.cfg.data
    common: dict[str, Any] = dict(
        context_len=data.context_len,
        heldout_frac=data.heldout_frac,
        seed=cfg.seed,
        batch_size=data.batch_size,
        progress=run.progress,
    )
    source, target = hooks.source, hooks.target
    with run.stage("collect", f"collecting {cfg.tokens:,} tokens at {source}, {target}"):
        store = collect(
            lm,
            [source, target],
            corpus=corpora.main,
            n_tokens=cfg.tokens,
            out=run.dirs.store,
            dtype=data.store_dtype,
            **common,
        )
    if corpora.sweep is None:
        return store, None
    names, n = sweep_hooks(source, target), sweep_tokens(cfg)
    with run.stage("collect_sweep", f"collecting {n:,} tokens at {len(names)} hooks (sweep)"):
        try:
            sweep = collect(
                lm,
                names,
                corpus=corpora.sweep,
                n_tokens=n,
                out=run.dirs.sweep_store,
                dtype=cfg.sweep.dtype,
                **common,
            )
        except DataError as e:
            if "float16" not in e.problem:
                raise
            raise DataError(
                e.problem, "set sweep.dtype: float32 (--set sweep.dtype=float32)"
            ) from e
    return store, sweep


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
