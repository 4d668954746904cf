"""Documents and the corpus that yields them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from crosslayer.errors import CrosslayerError


@dataclass(frozen=True)
class Document:
    """One document: its position in the corpus, its text and, where known, its title."""

    doc_id: int
    text: str
    title: str = ""


@runtime_checkable
class Corpus(Protocol):
    """An iterable of documents in a deterministic order."""

    name: str

    def __iter__(self) -> Iterator[Document]: ...

    def identity(self) -> dict[str, Any]: ...


# A source yields (title, text) pairs; the corpus numbers them.
Records = Callable[[], Iterable[tuple[str, str]]]


@dataclass
class TextCorpus:
    """A corpus over a re-iterable source of ``(title, text)`` records.

    Records whose text is empty or only whitespace are skipped; the others get
    consecutive ``doc_id`` 0, 1, 2, ... in source order, so ids are stable as long as
    the source is unchanged.
    """

    name: str
    records: Records
    source: dict[str, Any] = field(default_factory=dict)  # kind, files, hashes: for identity()
    countable: bool = True  # False for hub streams: counting would download the whole set
    _n_documents: int | None = field(default=None, init=False, repr=False)

    def __iter__(self) -> Iterator[Document]:
        n = 0
        for title, text in self.records():
            if text.strip():
                yield Document(doc_id=n, text=text, title=title)
                n += 1
        if n == 0:
            raise CrosslayerError(
                f"corpus {self.name!r} has no text", "point it at files with non-empty text"
            )
        self._n_documents = n

    def n_documents(self) -> int | None:
        """Number of documents (counted by one pass unless the source is a hub stream)."""
        if self._n_documents is None and self.countable:
            for _ in self:
                pass
        return self._n_documents

    def identity(self) -> dict[str, Any]:
        """JSON-able description for manifests: spec, source files/hashes, number of docs."""
        return {"spec": self.name, **self.source, "n_documents": self.n_documents()}
