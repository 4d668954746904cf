"""Text corpora and their tokenisation into fixed-length contexts.

>>> corpus = load_corpus("builtin:wiki")
>>> for ctx in iter_contexts(corpus, tokenizer, context_len=128): ...

See docs/corpus.md for the sources, document boundaries and token counts.
"""

from crosslayer.corpus.base import Corpus, Document, TextCorpus
from crosslayer.corpus.builtin import BUILTINS
from crosslayer.corpus.contexts import MIN_TOKENS, Context, iter_contexts, split_of
from crosslayer.corpus.load import DEFAULT_CORPUS, cut_documents, load_corpus

__all__ = [
    "BUILTINS",
    "DEFAULT_CORPUS",
    "MIN_TOKENS",
    "Context",
    "Corpus",
    "Document",
    "TextCorpus",
    "cut_documents",
    "iter_contexts",
    "load_corpus",
    "split_of",
]
