"""Give back the resident pages of read-only file mappings once a pass over them is done.

Two things in a collection or a read are file mappings whose pages count towards the
process's resident set (RSS) as soon as they are touched, and stay counted until unmapped:

* the model weights: transformers maps ``model.safetensors`` privately and, when the dtype
  matches, uses the mapping as the parameter's storage. Gemma 3 270M's embedding table
  (262,144 x 640 float32 = 640 MB) is one such tensor; an embedding lookup pages in the
  rows of the tokens seen (plus the kernel's 64 kB fault-around), so the RSS of a collection
  grew with the number of distinct tokens: +180 MB from 100k to 400k tokens (issue 2);
* a store's ``.npy`` files, opened memory-mapped by the reader.

Those pages are clean copies of the file: ``madvise(MADV_DONTNEED)`` unmaps them from this
process (the kernel keeps them in its page cache) and the next access faults them back in
unchanged. For a private mapping that is only true of pages never written to, so a mapping
with any copied-on-write ("Anonymous") page is left alone. Linux only; elsewhere a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MADV_DONTNEED = 4  # the Linux value; mmap.MADV_DONTNEED where Python has it
_MIN_BYTES = 1 << 20  # smaller mappings are not worth a system call


@dataclass(frozen=True)
class Mapping:
    """One line of ``/proc/self/smaps`` and the fields we need from its block."""

    start: int
    end: int
    perms: str
    inode: int
    rss_kb: int
    anonymous_kb: int

    @property
    def clean_file_backed(self) -> bool:
        """A file mapping, not executable, with no page copied-on-write (safe to drop)."""
        return self.inode != 0 and "x" not in self.perms and self.anonymous_kb == 0


def mappings() -> list[Mapping]:
    """This process's mappings from ``/proc/self/smaps`` (empty where there is none)."""
    try:
        with open("/proc/self/smaps") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out: list[Mapping] = []
    head: list[str] | None = None
    fields: dict[str, int] = {}

    def flush() -> None:
        if head is not None:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            rss, anon = fields.get("Rss", 0), fields.get("Anonymous", 0)
            out.append(Mapping(lo, hi, head[1], int(head[4]), rss, anon))

    for line in lines:
        parts = line.split()
        if parts and "-" in parts[0] and not parts[0].endswith(":"):  # a mapping's header
            flush()
            head, fields = parts, {}
        elif len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
            fields[parts[0][:-1]] = int(parts[1])
    flush()
    return out


def _madvise_dontneed(start: int, length: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return int(libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), MADV_DONTNEED)) == 0


def release_file_pages(addresses: Iterable[int]) -> int:
    """Drop the resident pages of every clean, file-backed mapping holding one of
    ``addresses`` (e.g. ``tensor.data_ptr()`` of model weights); return the bytes dropped.

    The data is unchanged: the next access reads the same bytes back from the page cache.
    """
    if not sys.platform.startswith("linux"):
        return 0
    wanted = sorted(set(addresses))
    if not wanted:
        return 0
    released = 0
    for m in mappings():
        if m.rss_kb * 1024 < _MIN_BYTES or not m.clean_file_backed:
            continue
        holds = any(m.start <= a < m.end for a in wanted)
        if holds and _madvise_dontneed(m.start, m.end - m.start):
            released += m.rss_kb * 1024
    return released


def release_module_pages(module: Any) -> int:
    """:func:`release_file_pages` for the CPU parameters and buffers of a torch module."""
    tensors = [*module.parameters(), *module.buffers()]
    return release_file_pages(t.data_ptr() for t in tensors if t.device.type == "cpu")


def release_memmap(array: Any) -> None:
    """Drop the resident pages of a read-only ``np.memmap`` (``np.load(mmap_mode="r")``).

    A read-only shared mapping has no private page to lose, so no check is needed and no
    ``/proc`` parsing: one system call. Anything else (a plain array, a view without its
    own mapping, a platform without ``madvise``) is left alone.
    """
    mm = getattr(array, "_mmap", None)
    advice = getattr(mmap, "MADV_DONTNEED", None)
    if isinstance(mm, mmap.mmap) and advice is not None and getattr(array, "mode", "") == "r":
        with contextlib.suppress(OSError, ValueError):  # closed or unsupported: leave it
            mm.madvise(advice)
