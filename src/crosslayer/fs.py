"""Atomic file-system writes: nothing half-written is ever visible under its final name."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crosslayer.errors import CrosslayerError


def _disk_error(path: Path, e: OSError) -> CrosslayerError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # no space, quota, size limit
        return CrosslayerError(
            f"disk full while writing {path} ({e.strerror})",
            "free space or choose another --out directory",
        )
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CrosslayerError(
            f"no permission to write {path}", "choose a directory you can write to"
        )
    return CrosslayerError(f"could not write {path}: {e.strerror or e}", "check the path")


def check_dir_path(
    path: str | os.PathLike[str], flag: str = "--out", *, itself: bool = True
) -> None:
    """A directory can be made at ``path``: no file above it and (``itself``) none at it.

    Checked before any work, so a bad ``--out`` is one line, not a traceback from mkdir after
    the model has loaded.
    """
    path = Path(path)
    if itself and path.exists() and not path.is_dir():
        raise CrosslayerError(f"{flag} {path} is a file", "choose a new or empty directory")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise CrosslayerError(
                f"{flag} {path} lies inside the file {parent}",
                "choose a directory whose parents are directories",
            )


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; rename it into place on success.

    On any error the temporary directory is removed, so ``final`` either does not
    exist or is complete. OS errors become one-line :class:`CrosslayerError`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(final, e) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_temporaries(root: str | os.PathLike[str], *, recursive: bool = False) -> None:
    """Remove the hidden temporaries (``.NAME.tmp-*``) that a writer killed inside
    :func:`atomic_dir` or :func:`atomic_write_bytes` leaves in ``root`` (and below it, with
    ``recursive``). None of them is part of an artefact: the rename never happened."""
    root = Path(root)
    if not root.is_dir():
        return
    for orphan in list(root.rglob(".*.tmp-*") if recursive else root.glob(".*.tmp-*")):
        if orphan.is_dir():
            shutil.rmtree(orphan, ignore_errors=True)
        else:
            orphan.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _disk_error(path, e) from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_npz(path: str | os.PathLike[str], **arrays: Any) -> None:
    """``np.savez(path, **arrays)`` atomically (built in memory, then
    :func:`atomic_write_bytes`): a killed write leaves no ``.npz`` behind."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def jsonable(obj: Any) -> Any:
    """numpy arrays and scalars to lists and Python numbers; NaN/inf to None (JSON has neither)."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode()
    )
