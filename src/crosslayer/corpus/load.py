"""``load_corpus(spec)``: one entry point for every kind of corpus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from crosslayer.corpus.base import TextCorpus
from crosslayer.corpus.builtin import load_builtin
from crosslayer.corpus.files import load_files
from crosslayer.corpus.hf import is_saved_dataset, load_hf, load_saved
from crosslayer.errors import CrosslayerError

DEFAULT_CORPUS = "builtin:wiki"


def load_corpus(
    spec: str = DEFAULT_CORPUS, *, text_field: str = "text", max_doc_chars: int | None = None
) -> TextCorpus:
    """Open a corpus by spec.

    - ``builtin:wiki`` / ``builtin:news``: real English text shipped with gensim;
    - a ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` file, or a directory of them;
    - a directory written by ``datasets``' ``save_to_disk``;
    - ``hf:PATH[:CONFIG][:SPLIT]``: a hub dataset, streamed (or a saved dataset directory).

    ``max_doc_chars``: cut every document to its first ``max_doc_chars`` characters
    (:func:`cut_documents`); ``None`` keeps them whole.

    The first document is read at once, so a wrong path, text field or format fails here
    rather than halfway through a long run.
    """
    if spec.startswith("builtin:"):
        corpus = load_builtin(spec.removeprefix("builtin:"))
    elif spec.startswith("hf:"):
        corpus = load_hf(spec, text_field)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise CrosslayerError(
                f"corpus {spec!r} not found",
                "give an existing file or directory, builtin:wiki, builtin:news or hf:PATH",
            )
        if path.is_dir() and is_saved_dataset(path):
            corpus = load_saved(path, text_field)
        else:
            corpus = load_files(path, text_field)
    next(iter(corpus))  # raises the corpus's own error if it has no usable text
    return corpus if max_doc_chars is None else cut_documents(corpus, max_doc_chars)


def cut_text(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters, at the last space if one lies in the
    second half (so no word is split), else exactly at ``max_chars``."""
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars]


def cut_documents(corpus: TextCorpus, max_doc_chars: int) -> TextCorpus:
    """The same documents, in the same order, each cut to ``max_doc_chars`` characters.

    Wikipedia articles run to 20k tokens; uncut, 120k tokens would come from ~16 articles and
    a held-out split from two or three. Cutting spreads the tokens over many documents. The
    identity records the cut beside the base corpus's identity.
    """
    if max_doc_chars < 1:
        raise CrosslayerError(
            f"max_doc_chars must be at least 1, got {max_doc_chars}",
            "pass a positive number of characters, or none to keep documents whole",
        )

    def records() -> Iterator[tuple[str, str]]:
        return ((d.title, cut_text(d.text, max_doc_chars)) for d in corpus)

    return TextCorpus(
        name=corpus.name,
        records=records,
        source={"base": corpus.identity(), "max_doc_chars": max_doc_chars},
        countable=corpus.countable,
    )
