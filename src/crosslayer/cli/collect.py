"""``crosslayer collect``: run a model over a corpus and store hook activations."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer

from crosslayer.cli.app import app, console, console_err

if TYPE_CHECKING:
    from crosslayer.store.collect import StoreDtype


@app.command("collect")
def collect_command(
    hooks: str = typer.Option(
        ..., "--hooks", help="Comma-separated hook names, e.g. hook_embed,blocks.12.hook_resid_post"
    ),
    out: Path = typer.Option(..., "--out", help="Store directory (created; resumed if it exists)"),
    model: str = typer.Option(
        "gemma-3-270m", "--model", help="Model alias, .gguf file, saved directory or HF id"
    ),
    corpus: str = typer.Option(
        "builtin:wiki", "--corpus", help="builtin:wiki, builtin:news, a file/dir, or hf:PATH"
    ),
    tokens: int = typer.Option(
        200_000, "--tokens", min=1, help="Sample tokens to store (BOS/pad/special excluded)"
    ),
    context_len: int = typer.Option(128, "--context-len", min=2, help="Tokens per context"),
    dtype: str = typer.Option("float32", "--dtype", help="Stored dtype: float32 or float16"),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Contexts per forward pass"),
    heldout_frac: float = typer.Option(
        0.1, "--heldout-frac", min=0.0, max=1.0, help="Fraction of documents held out"
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/held-out document split"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    text_field: str = typer.Option(
        "text", "--text-field", help="Text column of a jsonl/parquet/HF corpus"
    ),
    shard_tokens: int = typer.Option(16384, "--shard-tokens", min=1, help="Tokens per shard"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar"),
) -> None:
    """Collect activations at HOOKS for N sample tokens into a sharded store.

    Example:

        crosslayer collect --model gemma-3-270m --hooks hook_embed,blocks.12.hook_resid_post
        --corpus builtin:wiki --tokens 200000 --out runs/demo

    Interrupted? Run the same command again: finished shards are kept.

    On several GPUs (or CPU processes), launch it with torchrun; the store is the same:

        torchrun --nproc-per-node 8 -m crosslayer collect ...
    """
    from crosslayer import distributed
    from crosslayer.store import CollectConfig

    if not progress:  # also silence transformers' "Loading weights" bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    cfg = CollectConfig(
        model=model,
        hooks=[h.strip() for h in hooks.split(",") if h.strip()],
        corpus=corpus,
        tokens=tokens,
        out=out,
        context_len=context_len,
        dtype=_dtype(dtype),
        batch_size=batch_size,
        heldout_frac=heldout_frac,
        seed=seed,
        device=device,
        text_field=text_field,
        shard_tokens=shard_tokens,
    )
    start = time.perf_counter()
    with distributed.session(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        store = cfg.run(progress=progress)
        if distributed.rank() != 0:  # rank 0 reports for all
            return
    seconds = time.perf_counter() - start
    for w in caught:
        if "sample tokens" in str(w.message):  # our corpus-too-small warning, not library noise
            console_err.print(f"[bold yellow]warning:[/] {w.message}", highlight=False)

    n_heldout = int(store.split.sum())
    size = sum(f.stat().st_size for f in store.path.rglob("*") if f.is_file())
    console.print(
        f"stored {store.n_tokens:,} tokens ({store.n_tokens - n_heldout:,} train, "
        f"{n_heldout:,} held-out) x {len(store.hooks)} hooks "
        f"({', '.join(f'{h} [{store.d(h)}]' for h in store.hooks)}) as {store.manifest['dtype']}"
        f" in {store.path}: {store.manifest['n_shards']} shards, {size / 1e6:,.1f} MB, "
        f"{seconds:,.1f} s, config {store.manifest['config_hash']}",
        highlight=False,
    )


def _dtype(value: str) -> StoreDtype:
    from crosslayer.errors import CrosslayerError

    if value in ("float32", "float16"):
        return cast("StoreDtype", value)
    raise CrosslayerError(f"unknown --dtype {value!r}", "use float32 or float16")
