"""Built-in corpora: real English text shipped inside gensim's wheel, so no download."""

from __future__ import annotations

import bz2
import functools
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from crosslayer.corpus.base import TextCorpus
from crosslayer.corpus.files import fingerprint
from crosslayer.corpus.wiki import clean_wiki, is_redirect
from crosslayer.errors import CrosslayerError

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
MIN_ARTICLE_CHARS = 1000  # shorter cleaned pages are stubs or disambiguation lists


def _datapath(name: str) -> str:
    # local: start-up cost (gensim, only for builtin:wiki)
    from gensim.test.utils import datapath

    return str(datapath(name))


@functools.lru_cache(maxsize=1)
def wiki_articles() -> tuple[tuple[str, str], ...]:
    """(title, plain text) of the sample's articles; redirects and stubs skipped. ~4 s once."""
    # local: start-up cost (gensim)
    from gensim.corpora.wikicorpus import extract_pages

    out = []
    with bz2.open(_datapath(WIKI_FILE)) as f:
        for title, markup, _pageid in extract_pages(f):
            if is_redirect(markup):
                continue
            text = clean_wiki(markup)
            if len(text) >= MIN_ARTICLE_CHARS:
                out.append((title, text))
    return tuple(out)


def news_articles() -> list[tuple[str, str]]:
    """The Lee background corpus: 300 Australian news articles, one per line (no titles)."""
    with open(_datapath(NEWS_FILE), encoding="utf-8") as f:
        return [("", line.strip()) for line in f]


BUILTINS: dict[str, tuple[str, Callable[[], object]]] = {
    "wiki": (WIKI_FILE, wiki_articles),
    "news": (NEWS_FILE, news_articles),
}


def load_builtin(name: str) -> TextCorpus:
    """``builtin:wiki`` or ``builtin:news``."""
    if name not in BUILTINS:
        valid = ", ".join(f"builtin:{k}" for k in BUILTINS)
        raise CrosslayerError(f"unknown built-in corpus 'builtin:{name}'", f"use one of: {valid}")
    file, records = BUILTINS[name]
    return TextCorpus(
        name=f"builtin:{name}",
        records=records,  # type: ignore[arg-type]
        source={
            "kind": "builtin",
            "gensim": metadata.version("gensim"),  # the text ships with (and could change with) it
            "files": [fingerprint(Path(_datapath(file)))],
        },
    )
