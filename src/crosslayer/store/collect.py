"""Collect activations at any set of hook points into a sharded, resumable store.

The context stream of a corpus is deterministic, so its sample tokens form one fixed
sequence. Shard ``k`` holds sample tokens ``[k * shard_tokens, (k + 1) * shard_tokens)`` of
that sequence, and its contexts are run in batches that start at the shard's first context.
A shard is therefore a pure function of the config and ``k``: a resumed run, or the ranks of
``torchrun`` taking shards round-robin (``k % world_size == rank``), write byte-identical
files. The one context that
straddles a shard boundary is run twice, once per shard (under 1% extra work).

Several stores can be filled by one pass (:func:`collect_together`): every store holds the
first ``n_tokens`` sample tokens of the same stream, so a smaller store's shard ``k`` is the
first rows of a larger store's shard ``k``, cut from the very same forward pass.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from crosslayer import distributed, fs
from crosslayer.corpus import Context, Corpus, iter_contexts, load_corpus
from crosslayer.device import to_device
from crosslayer.errors import ConfigMismatchError, CrosslayerError, DataError
from crosslayer.model import LoadedModel
from crosslayer.model.compiled import compiled_forward
from crosslayer.provenance import config_hash, versions
from crosslayer.stage_configs import SHARD_TOKENS, StoreDtype
from crosslayer.stage_configs import CollectConfig as CollectConfig  # lives with the others
from crosslayer.store.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    META,
    read_manifest,
    shard_name,
    write_manifest,
    write_shard,
)
from crosslayer.store.reader import ActivationStore, open_store
from crosslayer.store.residency import release_module_pages

FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504


@dataclass
class _Piece:
    """The part of one context that belongs to one shard."""

    context_id: int
    context: Context
    take: np.ndarray  # bool [context_len]: sample positions stored in this shard


def _plan(contexts: Iterable[Context], n_tokens: int, shard_tokens: int) -> Iterator[list[_Piece]]:
    """Cut the stream of sample tokens into shards of ``shard_tokens`` (the last one trimmed).

    Yields one list of pieces per shard. Stops early if the corpus runs out.
    """
    shard: list[_Piece] = []
    stored = 0
    room = min(shard_tokens, n_tokens)
    for context_id, context in enumerate(contexts):
        positions = np.flatnonzero(context.sample)
        while positions.size:
            n = min(room, positions.size)
            take = np.zeros_like(context.sample)
            take[positions[:n]] = True
            shard.append(_Piece(context_id, context, take))
            positions, room, stored = positions[n:], room - n, stored + n
            if room == 0:
                yield shard
                shard, room = [], min(shard_tokens, n_tokens - stored)
                if room == 0:
                    return
    if shard:
        yield shard


def _check_values(x: torch.Tensor, hook: str, dtype: StoreDtype, pieces: list[_Piece]) -> None:
    """Refuse NaN/inf, and values that float16 would turn into inf, before anything is written."""
    peak = float(x.abs().amax()) if x.numel() else 0.0  # NaN and inf propagate through amax
    if math.isfinite(peak) and (dtype == "float32" or peak <= FLOAT16_MAX):
        return
    where = f"contexts {pieces[0].context_id}..{pieces[-1].context_id}"
    if not math.isfinite(peak):
        raise DataError(
            f"non-finite activations (NaN or inf) at {hook} in {where}",
            "check the model weights; a float16/bfloat16 model may overflow: try "
            "--model-dtype float32",
        )
    raise DataError(
        f"activations at {hook} reach {peak:.3g} in {where}, beyond float16's range "
        f"(±{FLOAT16_MAX:.0f})",
        "use --dtype float32",
    )


Forward = Callable[[np.ndarray], dict[str, torch.Tensor]]  # token ids [n, length] -> acts


def _forward(
    model: LoadedModel, hooks: Sequence[str], *, compile: bool, batch_size: int, context_len: int
) -> Forward:
    """The model's forward pass to ``hooks``: HF's, or compiled (crosslayer.model.compiled)."""
    if compile:
        return compiled_forward(model, hooks, batch_size=batch_size, context_len=context_len)
    return lambda ids: model.run_with_hooks(torch.from_numpy(ids), hooks=hooks)


def _run_shard(
    forward: Forward,
    model: LoadedModel,
    hooks: Sequence[str],
    pieces: list[_Piece],
    *,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """Forward the shard's contexts in batches; return its metadata and activation arrays.

    Activations come back as float32 (a bfloat16 model's are exact in float32); each store
    then casts its own rows to its dtype (:func:`_store_arrays`).
    """
    out: dict[str, list[np.ndarray]] = {
        k: [] for k in ("tokens", "doc_ids", "positions", "context_ids", "split", *hooks)
    }
    for i in range(0, len(pieces), batch_size):
        batch = pieces[i : i + batch_size]
        take = np.stack([p.take for p in batch])
        # Contexts are right-padded and attention is causal, so positions after the last
        # sample cannot influence the ones we keep: cut them, and pass no attention mask
        # (which also keeps the fast causal attention kernel).
        length = int(np.flatnonzero(take.any(axis=0))[-1]) + 1
        take = take[:, :length]
        ids = np.stack([p.context.tokens[:length] for p in batch])
        acts = forward(ids)
        mask = to_device(torch.from_numpy(take), model.device)
        for hook in hooks:
            rows = acts[hook][mask]  # [n, d], row-major order = np.nonzero order below
            _check_values(rows, hook, "float32", batch)
            out[hook].append(rows.to(torch.float32).cpu().numpy())
        row, pos = np.nonzero(take)
        out["tokens"].append(ids[row, pos].astype(np.int32))
        out["positions"].append(pos.astype(np.int32))
        out["doc_ids"].append(np.array([p.context.doc_id for p in batch], np.int64)[row])
        out["context_ids"].append(np.array([p.context_id for p in batch], np.int64)[row])
        out["split"].append(np.array([p.context.split for p in batch], np.uint8)[row])
    return {k: np.concatenate(v) for k, v in out.items()}


def _store_arrays(
    arrays: dict[str, np.ndarray], run: _Collection, n: int, pieces: list[_Piece]
) -> dict[str, np.ndarray]:
    """One store's share of a computed shard: its first ``n`` rows (of its documents), its
    hooks, in its dtype."""
    rows_of: slice | np.ndarray = slice(0, n)
    if run.docs is not None:
        rows_of = np.flatnonzero(np.isin(arrays["doc_ids"][:n], np.array(sorted(run.docs))))
    out = {k: arrays[k][rows_of] for k in META}
    for hook in run.hooks:
        rows = arrays[hook][rows_of]
        if run.dtype == "float16":
            _check_values(torch.from_numpy(rows), hook, "float16", pieces)
        out[hook] = rows.astype(run.dtype, copy=False)
    return out


def _open_or_start(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Resume the store at ``path`` if it has the same config, else start a new one.

    The manifest (with the config hash) is written before any work, so a store made with
    another config is detected at once and never mixed into.
    """
    # A run killed mid-write leaves hidden temporaries: a shard directory or the manifest's
    # temp file (even the very first manifest's). Neither is part of the store.
    fs.remove_temporaries(path)
    if (path / MANIFEST).is_file():
        old = read_manifest(path)
        if old.get("config_hash") != manifest["config_hash"]:
            differs = sorted(
                k
                for k in {*old.get("config", {}), *manifest["config"]}
                if old.get("config", {}).get(k) != manifest["config"].get(k)
            )
            raise ConfigMismatchError(
                f"store {path} was made with a different config "
                f"(differs in: {', '.join(differs) or 'format'})",
                "use another --out directory, or delete this one to start over",
            )
        return old
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise CrosslayerError(
            f"{path} exists and is not an activation store",
            "choose a new or empty --out directory",
        )
    path.mkdir(parents=True, exist_ok=True)
    write_manifest(path, manifest)
    return manifest


class _Rate(ProgressColumn):
    """Tokens per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} tok/s" if speed else "– tok/s", style="progress.data.speed")


def _progress_bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} tokens"),
        _Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


@dataclass(frozen=True)
class StoreSpec:
    """One store of a shared pass (:func:`collect_together`)."""

    out: str | Path  # store directory
    hooks: Sequence[str]  # hook names to store
    n_tokens: int  # the first n_tokens sample tokens of the context stream
    dtype: StoreDtype = "float32"
    # Only the rows of these documents among those n_tokens (None: all of them). Its shard
    # k holds the chosen rows of the stream's shard k, so a shard may be empty.
    docs: frozenset[int] | None = None


def collect(
    model: LoadedModel,
    hooks: Sequence[str],
    *,
    corpus: str | Corpus,
    n_tokens: int,
    out: str | Path,
    context_len: int = 128,
    heldout_frac: float = 0.1,
    seed: int = 0,
    dtype: StoreDtype = "float32",
    batch_size: int = 8,
    shard_tokens: int = SHARD_TOKENS,
    text_field: str = "text",
    progress: bool = True,
    compile: bool = False,
) -> ActivationStore:
    """Run ``model`` over ``corpus`` and store the activations of ``hooks`` at ``n_tokens``
    sample tokens (BOS, pad and special tokens excluded) in the store directory ``out``.

    Running it again with the same arguments resumes an interrupted collection (finished
    shards are kept) or returns the finished store. If the corpus has fewer sample tokens
    than ``n_tokens``, the store holds all of them and a warning says so.

    ``compile``: run a compiled forward pass (Gemma 3 models; :mod:`crosslayer.model.compiled`),
    equal to the HF forward up to float rounding; ~1.1x faster on a CPU after 15-20 s of
    compiling at the start (worth it from ~500k tokens).
    """
    (store,) = collect_together(
        model, [StoreSpec(out, hooks, n_tokens, dtype)], corpus=corpus,
        context_len=context_len, heldout_frac=heldout_frac, seed=seed, batch_size=batch_size,
        shard_tokens=shard_tokens, text_field=text_field, progress=progress, compile=compile,
    )  # fmt: skip
    return store


def collect_together(
    model: LoadedModel,
    stores: Sequence[StoreSpec],
    *,
    corpus: str | Corpus,
    context_len: int = 128,
    heldout_frac: float = 0.1,
    seed: int = 0,
    batch_size: int = 8,
    shard_tokens: int = SHARD_TOKENS,
    text_field: str = "text",
    progress: bool = True,
    compile: bool = False,
) -> list[ActivationStore]:
    """Fill several stores from one forward pass over the same context stream.

    Store ``i`` holds the first ``stores[i].n_tokens`` sample tokens (or, with ``docs``, the
    rows of those documents among them), so a smaller store is a part of a larger one: its
    rows are the larger store's rows (same documents, contexts, tokens; for a hook both
    store, the same values, cut from the same forward).
    Each store is an ordinary store with its own manifest, equal to what :func:`collect`
    writes for it alone up to float rounding in its last batch, and each resumes shard by
    shard: a shard missing from any store is recomputed, and written only where missing.
    """
    if not stores:
        raise CrosslayerError("no stores to collect", "pass at least one StoreSpec")
    hooks = []
    for s in stores:
        names = _check_inputs(
            model, s.hooks, dtype=s.dtype, n_tokens=s.n_tokens, batch_size=batch_size,
            shard_tokens=shard_tokens,
        )  # fmt: skip
        hooks.append(names)
    corpus, contexts = _open_contexts(
        model, corpus, text_field=text_field, context_len=context_len,
        heldout_frac=heldout_frac, seed=seed,
    )  # fmt: skip
    runs = []
    for spec, names in zip(stores, hooks, strict=True):
        start = _new_manifest(
            model, names, corpus, n_tokens=spec.n_tokens, context_len=context_len,
            heldout_frac=heldout_frac, seed=seed, dtype=spec.dtype, shard_tokens=shard_tokens,
            docs=spec.docs,
        )  # fmt: skip
        runs.append(_open_collection(Path(spec.out), start, names, spec))
    if not all(r.finished for r in runs):
        n_max = max(r.n_tokens for r in runs)
        todo = _shards_to_do(runs, _plan(contexts, n_max, shard_tokens), shard_tokens)
        error: Exception | None = None
        try:
            _collect_shards(
                runs, model, todo, n_tokens=n_max, shard_tokens=shard_tokens,
                batch_size=batch_size, progress=progress, compile=compile,
                context_len=context_len,
            )  # fmt: skip
        except Exception as e:  # a one-line error on one rank must end every rank
            error = e
        distributed.raise_if_any_failed(error)
        for run in runs:
            if not run.finished:
                _finish_manifest(run, corpus_name=corpus.name)
        distributed.barrier()  # the other ranks open the stores once the manifests are final
    return [open_store(r.path) for r in runs]


@dataclass
class _Collection:
    """A store under way: its manifest, what it holds and this process's share of it."""

    path: Path
    manifest: dict[str, Any]  # rank 0's copy is the one on disk
    present: list[dict[str, Any]]  # entries of the shards already in the store at the start
    finished: bool  # complete, every shard present: nothing to do
    rank: int
    world: int
    hooks: list[str]
    n_tokens: int
    dtype: StoreDtype
    docs: frozenset[int] | None
    mine: list[dict[str, Any]] = field(default_factory=list)  # entries of shards this rank wrote

    def needs(self, index: int, shard_tokens: int) -> bool:
        """Whether shard ``index`` belongs to this store and is still to be written."""
        done = {s["name"] for s in self.present} | {s["name"] for s in self.mine}
        return (
            not self.finished
            and index * shard_tokens < self.n_tokens
            and shard_name(index) not in done
        )


def _check_inputs(
    model: LoadedModel,
    hooks: Sequence[str],
    *,
    dtype: StoreDtype,
    n_tokens: int,
    batch_size: int,
    shard_tokens: int,
) -> list[str]:
    """Refuse bad settings before anything is loaded or written; return the hook names."""
    hooks = model.validate_hooks(hooks)
    if dtype not in ("float32", "float16"):
        raise CrosslayerError(f"unknown store dtype {dtype!r}", "use float32 or float16")
    for name, value in (("n_tokens", n_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise CrosslayerError(
                f"{name} must be at least 1, got {value}", f"pass a larger {name}"
            )
    if shard_tokens < 1:
        raise CrosslayerError(f"shard_tokens must be >= 1, got {shard_tokens}", "use e.g. 16384")
    return hooks


def _open_contexts(
    model: LoadedModel,
    corpus: str | Corpus,
    *,
    text_field: str,
    context_len: int,
    heldout_frac: float,
    seed: int,
) -> tuple[Corpus, Iterator[Context]]:
    """The corpus and its deterministic context stream, checked to give at least one context."""
    if isinstance(corpus, str):
        corpus = load_corpus(corpus, text_field=text_field)
    contexts = iter_contexts(
        corpus, model.tokenizer, context_len=context_len, heldout_frac=heldout_frac, seed=seed
    )
    first = next(contexts, None)  # bad settings or an unusable corpus fail before any file
    if first is None:
        raise DataError(
            f"corpus {corpus.name!r} gives no contexts of at least a few tokens",
            "use a corpus with longer documents",
        )
    return corpus, _chain(first, contexts)


def _new_manifest(
    model: LoadedModel,
    hooks: list[str],
    corpus: Corpus,
    *,
    n_tokens: int,
    context_len: int,
    heldout_frac: float,
    seed: int,
    dtype: StoreDtype,
    shard_tokens: int,
    docs: frozenset[int] | None = None,
) -> dict[str, Any]:
    """The manifest of a store that has no shards yet (docs/store_format.md)."""
    # What defines the stored data; its hash decides whether an existing store can be resumed.
    config = {
        "model": model.identity,
        "hooks": hooks,
        "corpus": corpus.identity(),
        "n_tokens": n_tokens,
        "context_len": context_len,
        "heldout_frac": heldout_frac,
        "seed": seed,
        "dtype": dtype,
        "shard_tokens": shard_tokens,
    }
    if docs is not None:  # absent otherwise, so a whole-stream store's hash is unchanged
        config["docs"] = sorted(docs)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "config_hash": config_hash(config),
        "config": config,
        "hooks": hooks,
        "dims": {h: model.d_model for h in hooks},
        "dtype": dtype,
        "n_tokens": None,  # set when complete
        "n_shards": math.ceil(n_tokens / shard_tokens),  # planned; final count when complete
        "shards": [],
        "versions": versions(),
    }


def _open_collection(
    path: Path, start: dict[str, Any], hooks: list[str], spec: StoreSpec
) -> _Collection:
    """Start the store at ``path`` or resume it (its manifest is written before any work)."""
    rank, world = distributed.rank(), distributed.world_size()
    # Under torchrun, rank 0 alone starts or resumes the store (and removes temp dirs of a
    # killed run) while the others wait, so no rank's fresh temp dir is ever swept away.
    opened = distributed.on_rank_0(_open_or_start, path, start)
    manifest = read_manifest(path) if opened is None else opened
    # A shard deleted after the fact (say, reported damaged by `crosslayer verify`) is redone.
    present = [s for s in manifest["shards"] if (path / s["name"]).is_dir()]
    finished = manifest["complete"] and len(present) == len(manifest["shards"])
    if not finished:
        manifest.update(shards=present, complete=False)
    return _Collection(
        path, manifest, present, finished, rank, world, hooks, spec.n_tokens, spec.dtype,
        spec.docs,
    )  # fmt: skip


def _shards_to_do(
    runs: list[_Collection], plan: Iterable[list[_Piece]], shard_tokens: int
) -> Iterator[tuple[int, list[_Piece], list[_Collection]]]:
    """The shards (index, pieces, stores that need it) of ``plan`` this rank owns
    (round-robin) and some store has not stored.

    The plan is walked up to the last shard any store needs, since a shard's pieces depend
    on every shard before it.
    """
    last = max((math.ceil(r.n_tokens / shard_tokens) for r in runs if not r.finished), default=0)
    for index, pieces in enumerate(plan):
        if index >= last:
            return
        need = [r for r in runs if r.needs(index, shard_tokens)]
        if index % runs[0].world == runs[0].rank and need:
            yield index, pieces, need


def _collect_shards(
    runs: list[_Collection],
    model: LoadedModel,
    todo: Iterable[tuple[int, list[_Piece], list[_Collection]]],
    *,
    n_tokens: int,
    shard_tokens: int,
    batch_size: int,
    progress: bool,
    compile: bool,
    context_len: int,
) -> None:
    """Compute every shard in ``todo`` once and store it in each store that needs it, with a
    progress bar (tokens of the largest store) on rank 0."""
    rank, world = runs[0].rank, runs[0].world
    biggest = max(runs, key=lambda r: r.n_tokens)
    bar = _progress_bar(progress and rank == 0)
    # A compiled forward (made once per model and hook set: compiled_forward) serves every
    # shard with the hooks of all stores, since compiling costs more than copying a few
    # unused outputs; the HF forward computes each shard's own.
    every = list(dict.fromkeys(h for r in runs if not r.finished for h in r.hooks))
    label = "collecting" if world == 1 else f"collecting (rank 0 of {world})"
    with bar, torch.inference_mode():
        task = bar.add_task(
            f"{label}, compiling first" if compile else label,
            total=n_tokens if world == 1 else math.ceil(n_tokens / world),
            completed=sum(s["n_tokens"] for s in biggest.present) // world,
        )
        for index, pieces, need in todo:
            hooks = list(dict.fromkeys(h for r in need for h in r.hooks))  # forward order kept
            forward = _forward(
                model, every if compile else hooks, compile=compile, batch_size=batch_size,
                context_len=context_len,
            )  # fmt: skip
            arrays = _run_shard(forward, model, hooks, pieces, batch_size=batch_size)
            bar.update(task, description=label)
            rows = len(arrays["tokens"])
            for run in need:
                n = min(shard_tokens, run.n_tokens - index * shard_tokens)
                _store_shard(run, index, _store_arrays(arrays, run, n, pieces))
            del arrays
            # Weights memory-mapped from the model file (Gemma's 640 MB embedding table) page
            # in row by row as new tokens appear: give those pages back after every shard, or
            # the RSS grows with the number of distinct tokens seen (issue 2).
            release_module_pages(model.model)
            bar.advance(task, rows)


def _store_shard(run: _Collection, index: int, arrays: dict[str, np.ndarray]) -> None:
    """Write one shard atomically, then list it in the manifest."""
    run.mine.append(write_shard(run.path, index, arrays))
    if run.rank == 0:  # only rank 0 writes the manifest; others' shards join at the end
        run.manifest["shards"] = sorted([*run.manifest["shards"], run.mine[-1]], key=_name)
        write_manifest(run.path, run.manifest)


def _finish_manifest(run: _Collection, *, corpus_name: str) -> None:
    """Gather every rank's shards and, on rank 0, write the complete manifest."""
    n_tokens = run.n_tokens
    written = [e for entries in distributed.all_gather_object(run.mine) for e in entries]
    shards = sorted({s["name"]: s for s in [*run.present, *written]}.values(), key=_name)
    stored = sum(s["n_tokens"] for s in shards)
    exhausted = stored < n_tokens and run.docs is None  # a documents' store is smaller anyway
    if run.rank == 0:
        if exhausted:
            warnings.warn(
                f"corpus {corpus_name!r} has only {stored:,} sample tokens; the store holds "
                f"all of them instead of {n_tokens:,}",
                stacklevel=4,  # the caller of collect()
            )
        run.manifest.update(
            shards=shards,
            complete=True,
            n_tokens=stored,
            n_shards=len(shards),
            corpus_exhausted=exhausted,
        )
        write_manifest(run.path, run.manifest)


def _name(entry: dict[str, Any]) -> str:
    return str(entry["name"])


def _chain(first: Context, rest: Iterator[Context]) -> Iterator[Context]:
    yield first
    yield from rest
