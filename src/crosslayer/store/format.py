"""The on-disk store format: a manifest plus shard directories of plain ``.npy`` files.

Why ``.npy``: numpy opens them memory-mapped with no extra dependency, any language can
read them, and a batch of rows is one contiguous read. ``benchmarks/results/store_format.md``
compares this format with SAELens's Arrow cache on the same activations.

Every shard directory is written under a temporary name and renamed into place
(:func:`crosslayer.fs.atomic_dir`), and only then recorded in ``manifest.json``, so a
killed run leaves either a complete shard or none. See ``docs/store_format.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crosslayer.errors import CrosslayerError, DataError
from crosslayer.fs import atomic_dir, atomic_write_json, sha256_file

FORMAT = "crosslayer-activation-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"

# Per-token metadata stored beside the activations in every shard: name -> dtype.
META = {
    "tokens": np.dtype(np.int32),  # token id at the sample position
    "doc_ids": np.dtype(np.int64),  # document the token comes from
    "positions": np.dtype(np.int32),  # position in its context (BOS = 0)
    "context_ids": np.dtype(np.int64),  # index of the context in the context stream
    "split": np.dtype(np.uint8),  # 0 = train, 1 = held-out
}
SPLITS = {"train": 0, "heldout": 1}


def shard_name(index: int) -> str:
    """Directory name of shard ``index`` (``shard_00000``, ...)."""
    return f"shard_{index:05d}"


def hook_file(hook: str) -> str:
    """File name of a hook's activations inside a shard (hook names are valid file names)."""
    return f"{hook}.npy"


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a Python file, so a full disk raises ``OSError`` with its errno
    (numpy's own writer reports only "N requested and M written")."""
    array = np.ascontiguousarray(array)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
        f.write(array.data)


def write_shard(store: Path, index: int, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Write one shard atomically and return its manifest entry.

    ``arrays`` maps file stems (metadata names and hook names) to arrays with the same
    number of rows. A write that fails (full disk, file-size limit) raises a one-line
    :class:`CrosslayerError` and leaves no shard directory behind.
    """
    rows = {len(a) for a in arrays.values()}
    if len(rows) != 1:
        raise ValueError(f"shard arrays have different lengths: {sorted(rows)}")
    with atomic_dir(store / shard_name(index)) as tmp:
        for stem, array in arrays.items():
            save_npy(tmp / f"{stem}.npy", array)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
    return {"name": shard_name(index), "n_tokens": rows.pop(), "files": files}


def read_manifest(store: Path) -> dict[str, Any]:
    """Load ``STORE/manifest.json``; a missing or unreadable one is a one-line error."""
    path = store / MANIFEST
    if not path.is_file():
        raise CrosslayerError(
            f"no activation store at {store} ({MANIFEST} not found)",
            "pass a directory written by `crosslayer collect --out DIR`",
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}", "re-run the collect command") from e
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a crosslayer activation store manifest", "check the path")
    return dict(manifest)


def write_manifest(store: Path, manifest: Mapping[str, Any]) -> None:
    """Atomically replace ``STORE/manifest.json``."""
    atomic_write_json(store / MANIFEST, dict(manifest))


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_store`: which shard files are missing or damaged."""

    path: Path
    n_shards: int
    n_files: int
    complete: bool
    missing: list[str] = field(default_factory=list)  # "shard_00003/tokens.npy"
    damaged: list[str] = field(default_factory=list)  # checksum differs

    @property
    def ok(self) -> bool:
        return self.complete and not self.missing and not self.damaged


def verify_store(path: str | Path) -> VerifyReport:
    """Re-hash every file listed in the manifest and report missing or damaged ones."""
    store = Path(path)
    manifest = read_manifest(store)
    report = VerifyReport(store, len(manifest["shards"]), 0, bool(manifest.get("complete", False)))
    for shard in manifest["shards"]:
        for name, digest in shard["files"].items():
            rel = f"{shard['name']}/{name}"
            report.n_files += 1
            if not (store / rel).is_file():
                report.missing.append(rel)
            elif sha256_file(store / rel) != digest:
                report.damaged.append(rel)
    return report
