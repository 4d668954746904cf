"""``load_corpus(spec)``: one entry point for every kind of corpus."""

from __future__ import annotations

from pathlib import Path

from crosslayer.corpus.base import TextCorpus
from crosslayer.corpus.builtin import load_builtin
from crosslayer.corpus.files import load_files
from crosslayer.corpus.hf import is_saved_dataset, load_hf, load_saved
from crosslayer.errors import CrosslayerError

DEFAULT_CORPUS = "builtin:wiki"


def load_corpus(spec: str = DEFAULT_CORPUS, *, text_field: str = "text") -> TextCorpus:
    """Open a corpus by spec.

    - ``builtin:wiki`` / ``builtin:news``: real English text shipped with gensim;
    - a ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` file, or a directory of them;
    - a directory written by ``datasets``' ``save_to_disk``;
    - ``hf:PATH[:CONFIG][:SPLIT]``: a hub dataset, streamed (or a saved dataset directory).

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
    return corpus
