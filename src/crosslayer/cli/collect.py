"""``crosslayer collect``: run a model over a corpus and store hook activations."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import cast, get_args

import typer

from crosslayer.cli._options import option_for
from crosslayer.cli.app import app, console, console_err
from crosslayer.errors import CrosslayerError
from crosslayer.stage_configs import CollectConfig as C
from crosslayer.stage_configs import ModelDtype, StoreDtype


@app.command("collect")
def collect_command(
    hooks: str = option_for(C, "hooks", "--hooks"),
    out: Path = option_for(C, "out", "--out"),
    model: str = option_for(C, "model", "--model"),
    corpus: str = option_for(C, "corpus", "--corpus"),
    tokens: int = option_for(C, "tokens", "--tokens", default=200_000, min=1),
    context_len: int = option_for(C, "context_len", "--context-len", min=2),
    dtype: str = option_for(C, "dtype", "--dtype"),
    batch_size: int = option_for(C, "batch_size", "--batch-size", min=1),
    heldout_frac: float = option_for(C, "heldout_frac", "--heldout-frac", min=0.0, max=1.0),
    seed: int = option_for(C, "seed", "--seed"),
    device: str = option_for(C, "device", "--device"),
    model_dtype: str = option_for(C, "model_dtype", "--model-dtype"),
    text_field: str = option_for(C, "text_field", "--text-field"),
    shard_tokens: int = option_for(C, "shard_tokens", "--shard-tokens", min=1),
    compile: bool = option_for(C, "compile", "--compile/--no-compile"),
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
    # local: start-up cost (a command imports its library code when it runs)
    from crosslayer import distributed

    if not progress:  # also silence transformers' "Loading weights" bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    cfg = C(
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
        model_dtype=_model_dtype(model_dtype),
        text_field=text_field,
        shard_tokens=shard_tokens,
        compile=compile,
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
    if value in ("float32", "float16"):
        return cast("StoreDtype", value)
    raise CrosslayerError(f"unknown --dtype {value!r}", "use float32 or float16")


def _model_dtype(value: str) -> ModelDtype:
    if value in get_args(ModelDtype):
        return cast("ModelDtype", value)
    raise CrosslayerError(
        f"unknown --model-dtype {value!r}", f"use one of: {', '.join(get_args(ModelDtype))}"
    )
