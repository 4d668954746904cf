"""Helpers shared by the tests that drive ``crosslayer collect`` end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from crosslayer import numerics

HOOKS = "hook_embed,blocks.2.hook_resid_post"
# one thread: the CPU may be shared with other jobs, and OpenMP spin-waits badly then.
# Without MKL's settings (which importing crosslayer puts into os.environ): a child process
# must be made reproducible by crosslayer's own set-up, not by inheriting ours.
ENV = {
    **{k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "MKL_DYNAMIC")},
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
}


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


def assert_same_store(got: Path, want: Path) -> None:
    """``got`` equals ``want`` byte for byte where crosslayer promises identity (the CPU with
    MKL in its reproducible mode); elsewhere (another BLAS) every array agrees to float32
    rounding and every other file is equal (docs/reproducibility.md)."""
    a, b = store_files(got), store_files(want)
    assert sorted(a) == sorted(b)
    exact = numerics.identity_promised()
    for name in a:
        if exact:
            assert a[name] == b[name], f"{name} differs"
        elif name.endswith(".npy"):
            x, y = np.load(got / name), np.load(want / name)
            scale = float(np.abs(y).max()) if y.size and y.dtype.kind == "f" else 0.0
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * scale, err_msg=name)
        elif name != "manifest.json":  # the manifest holds the arrays' checksums
            assert a[name] == b[name], f"{name} differs"


def spawn_cli(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    """Start ``python -m crosslayer ARGS`` in a child process (stdout/stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "crosslayer", *args], env=ENV, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw,
    )  # fmt: skip
