"""Collect activations at any set of hook points into a sharded, resumable store.

The context stream of a corpus is deterministic, so its sample tokens form one fixed
sequence. Shard ``k`` holds sample tokens ``[k * shard_tokens, (k + 1) * shard_tokens)`` of
that sequence, and its contexts are run in batches that start at the shard's first context.
A shard is therefore a pure function of the config and ``k``: a resumed run, or the ranks of
``torchrun`` taking shards round-robin (``k % world_size == rank``), write byte-identical
files. The one context that
straddles a shard boundary is run twice, once per shard (under 1% extra work).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
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
from crosslayer.errors import ConfigMismatchError, CrosslayerError, DataError
from crosslayer.model import LoadedModel
from crosslayer.provenance import config_hash, versions
from crosslayer.stage_configs import SHARD_TOKENS, StoreDtype
from crosslayer.stage_configs import CollectConfig as CollectConfig  # lives with the others
from crosslayer.store.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
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
            "check the model weights; a float16/bfloat16 model may overflow, try --device cpu",
        )
    raise DataError(
        f"activations at {hook} reach {peak:.3g} in {where}, beyond float16's range "
        f"(±{FLOAT16_MAX:.0f})",
        "use --dtype float32",
    )


def _run_shard(
    model: LoadedModel,
    hooks: Sequence[str],
    pieces: list[_Piece],
    *,
    batch_size: int,
    dtype: StoreDtype,
) -> dict[str, np.ndarray]:
    """Forward the shard's contexts in batches; return its metadata and activation arrays."""
    out: dict[str, list[np.ndarray]] = {
        k: [] for k in ("tokens", "doc_ids", "positions", "context_ids", "split", *hooks)
    }
    torch_dtype = getattr(torch, dtype)
    for i in range(0, len(pieces), batch_size):
        batch = pieces[i : i + batch_size]
        take = np.stack([p.take for p in batch])
        # Contexts are right-padded and attention is causal, so positions after the last
        # sample cannot influence the ones we keep: cut them, and pass no attention mask
        # (which also keeps the fast causal attention kernel).
        length = int(np.flatnonzero(take.any(axis=0))[-1]) + 1
        take = take[:, :length]
        ids = np.stack([p.context.tokens[:length] for p in batch])
        acts = model.run_with_hooks(torch.from_numpy(ids), hooks=hooks)
        mask = torch.from_numpy(take).to(model.device)
        for hook in hooks:
            rows = acts[hook][mask]  # [n, d], row-major order = np.nonzero order below
            _check_values(rows, hook, dtype, batch)
            out[hook].append(rows.to(torch_dtype).cpu().numpy())
        row, pos = np.nonzero(take)
        out["tokens"].append(ids[row, pos].astype(np.int32))
        out["positions"].append(pos.astype(np.int32))
        out["doc_ids"].append(np.array([p.context.doc_id for p in batch], np.int64)[row])
        out["context_ids"].append(np.array([p.context_id for p in batch], np.int64)[row])
        out["split"].append(np.array([p.context.split for p in batch], np.uint8)[row])
    return {k: np.concatenate(v) for k, v in out.items()}


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
) -> ActivationStore:
    """Run ``model`` over ``corpus`` and store the activations of ``hooks`` at ``n_tokens``
    sample tokens (BOS, pad and special tokens excluded) in the store directory ``out``.

    Running it again with the same arguments resumes an interrupted collection (finished
    shards are kept) or returns the finished store. If the corpus has fewer sample tokens
    than ``n_tokens``, the store holds all of them and a warning says so.
    """
    hooks = _check_inputs(
        model, hooks, dtype=dtype, n_tokens=n_tokens, batch_size=batch_size,
        shard_tokens=shard_tokens,
    )  # fmt: skip
    corpus, contexts = _open_contexts(
        model, corpus, text_field=text_field, context_len=context_len,
        heldout_frac=heldout_frac, seed=seed,
    )  # fmt: skip
    start = _new_manifest(
        model, hooks, corpus, n_tokens=n_tokens, context_len=context_len,
        heldout_frac=heldout_frac, seed=seed, dtype=dtype, shard_tokens=shard_tokens,
    )  # fmt: skip
    run = _open_collection(Path(out), start)
    if run.finished:  # a rerun of a finished collection: nothing to compute
        return open_store(run.path)
    todo = _shards_to_do(run, _plan(contexts, n_tokens, shard_tokens))
    error: Exception | None = None
    try:
        _collect_shards(
            run, model, hooks, todo, n_tokens=n_tokens, batch_size=batch_size, dtype=dtype,
            progress=progress,
        )  # fmt: skip
    except Exception as e:  # a one-line error on one rank must end every rank
        error = e
    distributed.raise_if_any_failed(error)
    _finish_manifest(run, n_tokens=n_tokens, corpus_name=corpus.name)
    distributed.barrier()  # the other ranks open the store once the manifest is final
    return open_store(run.path)


@dataclass
class _Collection:
    """A collection under way: its store, its manifest and this process's share of it."""

    path: Path
    manifest: dict[str, Any]  # rank 0's copy is the one on disk
    present: list[dict[str, Any]]  # entries of the shards already in the store at the start
    finished: bool  # complete, every shard present: nothing to do
    rank: int
    world: int
    mine: list[dict[str, Any]] = field(default_factory=list)  # entries of shards this rank wrote


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


def _open_collection(path: Path, start: dict[str, Any]) -> _Collection:
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
    return _Collection(path, manifest, present, finished, rank, world)


def _shards_to_do(
    run: _Collection, plan: Iterable[list[_Piece]]
) -> Iterator[tuple[int, list[_Piece]]]:
    """The shards (index, pieces) of ``plan`` this rank owns (round-robin) and has not stored.

    The whole plan is walked, since a shard's pieces depend on every shard before it.
    """
    done = {s["name"] for s in run.present}
    for index, pieces in enumerate(plan):
        if index % run.world == run.rank and shard_name(index) not in done:
            yield index, pieces


def _collect_shards(
    run: _Collection,
    model: LoadedModel,
    hooks: list[str],
    todo: Iterable[tuple[int, list[_Piece]]],
    *,
    n_tokens: int,
    batch_size: int,
    dtype: StoreDtype,
    progress: bool,
) -> None:
    """Compute and store every shard in ``todo``, with a progress bar on rank 0."""
    bar = _progress_bar(progress and run.rank == 0)
    with bar, torch.inference_mode():
        task = bar.add_task(
            "collecting" if run.world == 1 else f"collecting (rank 0 of {run.world})",
            total=n_tokens if run.world == 1 else math.ceil(n_tokens / run.world),
            completed=sum(s["n_tokens"] for s in run.present) // run.world,
        )
        for index, pieces in todo:
            entry = _store_shard(
                run, model, hooks, index, pieces, batch_size=batch_size, dtype=dtype
            )
            bar.advance(task, entry["n_tokens"])


def _store_shard(
    run: _Collection,
    model: LoadedModel,
    hooks: list[str],
    index: int,
    pieces: list[_Piece],
    *,
    batch_size: int,
    dtype: StoreDtype,
) -> dict[str, Any]:
    """Run one shard, write it atomically, then list it in the manifest; return its entry."""
    arrays = _run_shard(model, hooks, pieces, batch_size=batch_size, dtype=dtype)
    run.mine.append(write_shard(run.path, index, arrays))
    del arrays
    # Weights memory-mapped from the model file (Gemma's 640 MB embedding table) page in
    # row by row as new tokens appear: give those pages back after every shard, or the RSS
    # grows with the number of distinct tokens seen (issue 2).
    release_module_pages(model.model)
    if run.rank == 0:  # only rank 0 writes the manifest; others' shards join at the end
        run.manifest["shards"] = sorted([*run.manifest["shards"], run.mine[-1]], key=_name)
        write_manifest(run.path, run.manifest)
    return run.mine[-1]


def _finish_manifest(run: _Collection, *, n_tokens: int, corpus_name: str) -> None:
    """Gather every rank's shards and, on rank 0, write the complete manifest."""
    written = [e for entries in distributed.all_gather_object(run.mine) for e in entries]
    shards = sorted({s["name"]: s for s in [*run.present, *written]}.values(), key=_name)
    stored = sum(s["n_tokens"] for s in shards)
    if run.rank == 0:
        if stored < n_tokens:
            warnings.warn(
                f"corpus {corpus_name!r} has only {stored:,} sample tokens; the store holds "
                f"all of them instead of {n_tokens:,}",
                stacklevel=3,  # the caller of collect()
            )
        run.manifest.update(
            shards=shards,
            complete=True,
            n_tokens=stored,
            n_shards=len(shards),
            corpus_exhausted=stored < n_tokens,
        )
        write_manifest(run.path, run.manifest)


def _name(entry: dict[str, Any]) -> str:
    return str(entry["name"])


def _chain(first: Context, rest: Iterator[Context]) -> Iterator[Context]:
    yield first
    yield from rest
