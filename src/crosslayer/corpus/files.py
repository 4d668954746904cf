"""Local text files: .txt, .jsonl, .json, .parquet, and directories of them.

Document boundaries: a ``.txt`` file is ONE document (its title is the file's path);
``.jsonl`` has one record per line, ``.json`` is a list of records, ``.parquet`` one
record per row. A record is an object whose ``text_field`` holds the text (its "title"
field, if any, becomes the title) or, in .jsonl/.json, a bare string. A directory is read
recursively in sorted path order, so the document order is the same on every machine.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crosslayer.corpus.base import TextCorpus
from crosslayer.errors import CrosslayerError
from crosslayer.fs import sha256_file

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_HASH_LIMIT = 256 * 2**20  # hash files up to this size for the identity; bigger: size + mtime


TEXT_SUFFIXES = (".txt", ".jsonl", ".json")  # decoded as UTF-8; parquet stores typed columns


def utf8_error(path: Path, what: str = "corpus file") -> CrosslayerError | None:
    """The one-line error for the first byte of ``path`` that is not UTF-8, else None.

    Streams the file through an incremental decoder (1 MiB at a time), so the offset is the
    exact byte offset in the file whatever its size.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as f:
        while True:
            chunk = f.read(2**20)
            pending = len(decoder.getstate()[0])  # bytes of a split character, kept back
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                return CrosslayerError(
                    f"{what} {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at "
                    f"offset {at:,})",
                    f"convert it (e.g. `iconv -f latin1 -t utf-8 {path.name} > "
                    f"{path.stem}.utf8{path.suffix}`) or pass a UTF-8 text file",
                )
            if not chunk:
                return None
            offset += len(chunk)


def read_text_file(path: Path, what: str = "corpus file") -> str:
    """The whole of ``path`` as UTF-8 text; a file that is not is one line naming the byte."""
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError:
        raise (utf8_error(path, what) or _undecodable(path, what)) from None


def _undecodable(path: Path, what: str = "corpus file") -> CrosslayerError:
    return CrosslayerError(f"{what} {path} is not UTF-8 text", "pass a UTF-8 text file")


def _record_text(record: Any, text_field: str, where: str) -> tuple[str, str]:
    """(title, text) of one JSON record: a string, or an object with ``text_field``."""
    if isinstance(record, str):
        return "", record
    if not isinstance(record, dict):
        raise CrosslayerError(
            f"{where} is a {type(record).__name__}, not an object or a string",
            "make each record a JSON object with a text field, or a string",
        )
    if text_field not in record:
        raise CrosslayerError(
            f"{where} has no field {text_field!r} (fields: {', '.join(map(str, record))})",
            "pass --text-field with one of those",
        )
    text = record[text_field]
    if not isinstance(text, str):
        raise CrosslayerError(
            f"{where}: field {text_field!r} is a {type(text).__name__}, not a string",
            "point --text-field at a field that holds text",
        )
    title = record.get("title")
    return (title if isinstance(title, str) else ""), text


def _read_txt(path: Path, root: Path) -> Iterator[tuple[str, str]]:
    yield str(path.relative_to(root)) if path != root else path.name, read_text_file(path)


def _read_jsonl(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise (utf8_error(path) or _undecodable(path)) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CrosslayerError(
                    f"{path} line {lineno} is not valid JSON ({e.msg})",
                    "fix that line: each line must be one JSON object or string",
                ) from None
            yield _record_text(record, text_field, f"{path} line {lineno}")


def _read_json(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    try:
        records = json.loads(read_text_file(path))
    except json.JSONDecodeError as e:
        raise CrosslayerError(
            f"{path} is not valid JSON (line {e.lineno}: {e.msg})", "fix the file"
        ) from None
    if not isinstance(records, list):
        raise CrosslayerError(
            f"{path} holds a JSON {type(records).__name__}, not a list of records",
            "make it a list of objects or strings, or use .jsonl (one record per line)",
        )
    for i, record in enumerate(records):
        yield _record_text(record, text_field, f"{path} record {i}")


def _read_parquet(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    # local: start-up cost (pyarrow, only for .parquet)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise CrosslayerError(
            f"{path} has no column {text_field!r} (columns: {', '.join(names)})",
            "pass --text-field with one of those",
        )
    kind = pf.schema_arrow.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise CrosslayerError(
            f"{path}: column {text_field!r} holds {kind}, not text",
            "store the text as a string column, or pass --text-field with a text column",
        )
    columns = [text_field] + (["title"] if "title" in names and text_field != "title" else [])
    for batch in pf.iter_batches(batch_size=1024, columns=columns):
        texts = batch.column(text_field).to_pylist()
        titles = batch.column("title").to_pylist() if len(columns) > 1 else [""] * len(texts)
        for title, text in zip(titles, texts, strict=True):
            yield (title if isinstance(title, str) else ""), (text or "")


def read_file(path: Path, text_field: str, root: Path) -> Iterator[tuple[str, str]]:
    """(title, text) records of one file, by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _read_txt(path, root)
    if suffix == ".jsonl":
        return _read_jsonl(path, text_field)
    if suffix == ".json":
        return _read_json(path, text_field)
    if suffix == ".parquet":
        return _read_parquet(path, text_field)
    raise CrosslayerError(
        f"{path}: unknown file type {path.suffix or '(no suffix)'!r}",
        f"use one of {', '.join(SUFFIXES)}, a directory of them, builtin:NAME or hf:PATH",
    )


def list_files(path: Path) -> list[Path]:
    """The file itself, or every supported file under a directory, sorted."""
    if path.is_file():
        read_file(path, "text", path)  # raises early for an unknown suffix
        if path.stat().st_size == 0:
            raise CrosslayerError(f"{path} is empty", "point the corpus at a file with text")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise CrosslayerError(
            f"directory {path} holds no {', '.join(SUFFIXES)} files",
            "point the corpus at a directory with text files",
        )
    return files


def fingerprint(path: Path) -> dict[str, Any]:
    """Absolute path, size and SHA-256 of a file (size and mtime only for very large files)."""
    stat = path.stat()
    info: dict[str, Any] = {"path": str(path.resolve()), "bytes": stat.st_size}
    if stat.st_size <= _HASH_LIMIT:
        info["sha256"] = sha256_file(path)
    else:
        info["mtime"] = stat.st_mtime
    return info


def load_files(path: Path, text_field: str) -> TextCorpus:
    """A corpus over one file or a directory of files.

    Text files up to the hashing limit are checked for UTF-8 here, whole (a pass as cheap as
    the hash of their identity), so a bad byte deep in a file fails before any work rather
    than halfway through a collection; larger ones fail, in the same words, when read.
    """
    files = list_files(path)
    for f in files:
        if f.suffix.lower() in TEXT_SUFFIXES and f.stat().st_size <= _HASH_LIMIT:
            error = utf8_error(f)
            if error is not None:
                raise error

    def records() -> Iterator[tuple[str, str]]:
        for f in files:
            yield from read_file(f, text_field, path)

    return TextCorpus(
        name=str(path),
        records=records,
        source={
            "kind": "directory" if path.is_dir() else "file",
            "text_field": text_field,
            "files": [fingerprint(f) for f in files],
        },
    )
