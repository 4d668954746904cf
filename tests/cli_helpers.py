"""Helpers shared by the tests that drive ``crosslayer collect`` end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HOOKS = "hook_embed,blocks.2.hook_resid_post"
# one thread: the CPU may be shared with other jobs, and OpenMP spin-waits badly then
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def collect_args(model: Path, out: Path, tokens: int, *extra: str) -> list[str]:
    """``crosslayer collect`` arguments for a small store of ``tokens`` (500-token shards)."""
    return [
        "collect", "--model", str(model), "--hooks", HOOKS, "--corpus", "builtin:news",
        "--tokens", str(tokens), "--out", str(out), "--context-len", "32",
        "--shard-tokens", "500", "--batch-size", "4", "--no-progress", *extra,
    ]  # fmt: skip


def store_files(store: Path) -> dict[str, bytes]:
    """Every file under ``store`` (hidden ones included), by relative path, as bytes."""
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def spawn_cli(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    """Start ``python -m crosslayer ARGS`` in a child process (stdout/stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "crosslayer", *args], env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw,
    )  # fmt: skip
